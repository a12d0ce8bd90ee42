using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// KV-cache generation: tokens per second, per-token cost at an early and a late position, and the speed-up over
/// recomputing the whole sequence at every step. Runs on stories260K (from ../shared, when present) and on a ~21M-parameter
/// Llama with random weights.
/// </summary>
internal sealed class GenerationSuite : IBenchmarkSuite
{
    public string Name => "generation";
    public string Description => "KV-cache decoding: tokens/s, per-token time at position 16 vs 448, speed-up over full recomputation";

    const int EarlyPosition = 16, LatePosition = 448, StepsPerPosition = 16, PromptLength = 8;

    /// <summary>A ~21M-parameter Llama (TinyLlama-like shape, scaled down; vocabulary of Llama 2).</summary>
    internal static CausalLMConfig Llama21M() => new()
    {
        ModelType = "llama",
        VocabSize = 32000,
        HiddenSize = 384,
        IntermediateSize = 1024,
        NumHiddenLayers = 6,
        NumAttentionHeads = 6,
        NumKeyValueHeads = 6,
        HeadDim = 64,
        MaxPositionEmbeddings = 512,
        RmsNormEps = 1e-5,
        TieWordEmbeddings = true,
        BosTokenId = 1,
        EosTokenIds = [2],
    };

    public JsonObject Run(BenchmarkOptions options)
    {
        var results = new JsonObject();
        int newTokens = options.Quick ? 64 : 256;
        results["newTokens"] = newTokens;
        results["promptLength"] = PromptLength;

        string? stories = SharedFolder.Find("models/stories260K/stories260K.bin");
        if (stories is null)
        {
            Console.WriteLine("stories260K: skipped (../shared/models/stories260K/stories260K.bin is not present; set MLDPO_SHARED_DIR)");
            results["stories260K"] = new JsonObject { ["skipped"] = "../shared/models/stories260K/stories260K.bin not present" };
        }
        else
        {
            using var model = CausalLMLoader.Load(stories);
            results["stories260K"] = RunModel("stories260K", model, newTokens, options);
        }

        torch.manual_seed(1234);
        using (var model = CausalLM.Create(Llama21M()))
            results["llama21M"] = RunModel("llama21M (random weights)", model, newTokens, options);
        return results;
    }

    static JsonObject RunModel(string name, CausalLM model, int newTokens, BenchmarkOptions options)
    {
        long parameters = model.parameters().Sum(p => p.numel());
        var c = model.Config;
        Console.WriteLine($"-- {name}: {parameters:N0} parameters (hidden {c.HiddenSize}, {c.NumHiddenLayers} layers, " +
                          $"{c.NumAttentionHeads}/{c.NumKeyValueHeads} heads, vocab {c.VocabSize}, context {c.MaxPositionEmbeddings})");
        int[] prompt = Enumerable.Range(0, PromptLength).Select(i => i == 0 ? c.BosTokenId : 3 + (i * 37) % (c.VocabSize - 3)).ToArray();
        var generator = new TextGenerator(model);
        var greedy = new GenerationOptions { MaxNewTokens = newTokens, StopAtEos = false };

        // The machine may be shared: the two sides of every ratio are measured alternately (A B A B ...), after a warm-up of
        // each, and the ratio is the median of the per-pair ratios; times are medians over the repetitions.
        int[] cachedTokens = [], fullTokens = [];
        generator.Generate([prompt], new GenerationOptions { MaxNewTokens = 8, StopAtEos = false });        // warm up
        RecomputeGreedy(model, prompt, 8);
        DecodeSteps(model, EarlyPosition, 2);
        DecodeSteps(model, LatePosition, 2);
        var cached = new List<double>();
        var full = new List<double>();
        var early = new List<double>();
        var late = new List<double>();
        for (int r = 0; r < options.Repeats; r++)
        {
            // (a) KV-cache generation throughput (the TextGenerator, greedy, batch 1) and (c) full recomputation.
            cached.Add(Measure.Seconds(() => cachedTokens = generator.Generate([prompt], greedy).Single(), 1, warmup: 0)[0]);
            full.Add(Measure.Seconds(() => fullTokens = RecomputeGreedy(model, prompt, newTokens), 1, warmup: 0)[0]);
            // (b) Per-token decode time with the cache at an early and a late position.
            early.Add(DecodeSteps(model, EarlyPosition, StepsPerPosition) / StepsPerPosition);
            late.Add(DecodeSteps(model, LatePosition, StepsPerPosition) / StepsPerPosition);
        }
        double cachedMedian = Measure.Median(cached), fullMedian = Measure.Median(full);
        double earlyMs = Measure.Median(early) * 1000, lateMs = Measure.Median(late) * 1000;
        double positionRatio = Measure.Median(early.Zip(late, (e, l) => l / e).ToArray());
        double speedup = Measure.Median(cached.Zip(full, (c, f) => f / c).ToArray());
        bool same = fullTokens.SequenceEqual(cachedTokens);
        Console.WriteLine($"   kv-cache generation: {newTokens / cachedMedian:F1} tokens/s ({cachedMedian * 1000 / newTokens:F2} ms/token)");
        Console.WriteLine($"   per-token time: {earlyMs:F3} ms at position {EarlyPosition}, {lateMs:F3} ms at position {LatePosition}: ratio {positionRatio:F2} (target < 2)");
        Console.WriteLine($"   full recomputation: {newTokens / fullMedian:F1} tokens/s; kv-cache speed-up {speedup:F1}x (target >= 10x); same tokens: {same}");

        return new JsonObject
        {
            ["parameters"] = parameters,
            ["config"] = JsonNode.Parse(c.ToJson()),
            ["kvCache"] = new JsonObject
            {
                ["tokensPerSecond"] = Math.Round(newTokens / cachedMedian, 2),
                ["msPerToken"] = Math.Round(cachedMedian * 1000 / newTokens, 4),
                ["secondsPerRun"] = Measure.ToJson(cached),
            },
            ["perTokenByPosition"] = new JsonObject
            {
                ["steps"] = StepsPerPosition,
                ["msPerTokenEarly"] = Measure.ToJson(early.Select(e => e * 1000)),
                ["msPerTokenLate"] = Measure.ToJson(late.Select(e => e * 1000)),
                [$"msAt{EarlyPosition}"] = Math.Round(earlyMs, 4),
                [$"msAt{LatePosition}"] = Math.Round(lateMs, 4),
                ["ratio"] = Math.Round(positionRatio, 3),
                ["target"] = "< 2",
                ["met"] = positionRatio < 2,
            },
            ["fullRecomputation"] = new JsonObject
            {
                ["tokensPerSecond"] = Math.Round(newTokens / fullMedian, 2),
                ["secondsPerRun"] = Measure.ToJson(full),
                ["baseline"] = "whole sequence through the model at every step, output head on the last position only",
                ["kvCacheSpeedup"] = Math.Round(speedup, 2),
                ["target"] = ">= 10",
                ["met"] = speedup >= 10,
                ["sameTokens"] = same,
            },
        };
    }

    /// <summary>
    /// Prefills <paramref name="position"/> tokens into a fresh cache, then decodes <paramref name="steps"/> tokens one at a
    /// time; returns the seconds of the decoding alone.
    /// </summary>
    static double DecodeSteps(CausalLM model, int position, int steps)
    {
        using var noGrad = no_grad();
        using var cache = model.CreateCache();
        using var scope = NewDisposeScope();
        long vocab = model.Config.VocabSize;
        var prompt = arange(position, dtype: ScalarType.Int64).remainder(vocab - 3).add(3).view(1, position);
        long next = model.LogitsFromHidden(model.HiddenStates(prompt, cache: cache).narrow(1, position - 1, 1)).argmax(-1).item<long>();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < steps; i++)
        {
            using var step = NewDisposeScope();
            var logits = model.LogitsFromHidden(model.HiddenStates(tensor(new[] { next }, 1, 1), cache: cache));
            next = logits.argmax(-1).item<long>();
        }
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Greedy decoding without a cache: the whole sequence is run through the model at every step.</summary>
    static int[] RecomputeGreedy(CausalLM model, int[] prompt, int newTokens)
    {
        using var noGrad = no_grad();
        var seq = prompt.Select(t => (long)t).ToList();
        for (int i = 0; i < newTokens; i++)
        {
            using var scope = NewDisposeScope();
            var hidden = model.HiddenStates(tensor(seq.ToArray(), 1, seq.Count));
            seq.Add(model.LogitsFromHidden(hidden.narrow(1, seq.Count - 1, 1)).argmax(-1).item<long>());
        }
        return seq.Skip(prompt.Length).Select(t => (int)t).ToArray();
    }
}
