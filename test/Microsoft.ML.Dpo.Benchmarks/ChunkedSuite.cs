using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Runtime;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Chunked log-probs (<see cref="ChunkedLogProbs"/>) on a model whose output layer dominates: a small trunk (hidden 256,
/// 2 layers) with Qwen2.5's vocabulary of 151,936 tokens (tied, as Qwen2.5-0.5B), one full-weight DPO step with a live
/// reference on 2 pairs × 512 tokens (256 prompt + 256 completion, so M = 1,024 completion positions). Each variant runs in
/// a fresh child process, which reports its peak RSS above its baseline (libtorch loaded) and its median step time:
/// unchunked (the [M, V] logits kept for the backward pass) and chunked at several chunk sizes; a chunk of 32 positions
/// has logits temporaries of a few MiB, so its peak is the step's memory without the logits (the floor).
/// </summary>
internal sealed class ChunkedSuite : IBenchmarkSuite
{
    public string Name => "chunked";
    public string Description => "chunked log-probs: peak RSS and step time of a DPO step with a 151,936-token vocabulary, chunked vs unchunked";

    const int Pairs = 2, PromptLength = 256, CompletionLength = 256, Steps = 3;

    internal static CausalLMConfig Model() => new()
    {
        ModelType = "qwen2",
        VocabSize = 151_936,
        HiddenSize = 256,
        IntermediateSize = 768,
        NumHiddenLayers = 2,
        NumAttentionHeads = 4,
        NumKeyValueHeads = 2,
        HeadDim = 64,
        MaxPositionEmbeddings = 1024,
        RmsNormEps = 1e-6,
        RopeTheta = 1_000_000,
        TieWordEmbeddings = true,
        AttentionBias = true,
        BosTokenId = 1,
        EosTokenIds = [2],
    };

    public JsonObject Run(BenchmarkOptions options)
    {
        var config = Model();
        long m = 2L * Pairs * CompletionLength;
        double logitsMiB = 4.0 * m * config.VocabSize / 1048576.0;
        var results = new JsonObject
        {
            ["model"] = $"qwen2, hidden {config.HiddenSize}, {config.NumHiddenLayers} layers, vocabulary {config.VocabSize}, tied",
            ["step"] = $"full-weight DPO (sigmoid), live reference, {Pairs} pairs x {PromptLength + CompletionLength} tokens ({PromptLength} prompt + {CompletionLength} completion), float32, AdamW",
            ["completionPositions"] = m,
            ["logitsMiB"] = Math.Round(logitsMiB, 1),
        };
        Console.WriteLine($"  M = {m} completion positions: [M, V] float32 logits = {logitsMiB:F0} MiB");
        int[] chunks = options.Quick ? [256] : [128, 256, 1024];
        var variants = new List<(string Name, int? Chunk)> { ("unchunked", null), ("floor-chunk32", 32) };
        variants.AddRange(chunks.Select(c => ($"chunk{c}", (int?)c)));
        var measured = new Dictionary<string, (double AboveBaselineMiB, double PeakMiB, double Seconds)>();
        var perVariant = new JsonObject();
        foreach (var (name, chunk) in variants)
        {
            if (RunChild(chunk) is not { } r) { Console.WriteLine($"  {name}: the child process failed"); continue; }
            measured[name] = r;
            perVariant[name] = new JsonObject
            {
                ["chunkSize"] = chunk, ["peakRssMiB"] = Math.Round(r.PeakMiB, 1), ["peakRssAboveBaselineMiB"] = Math.Round(r.AboveBaselineMiB, 1),
                ["stepSeconds"] = Math.Round(r.Seconds, 3),
            };
            Console.WriteLine($"  {name}: peak RSS {r.PeakMiB:F0} MiB, {r.AboveBaselineMiB:F0} MiB above the baseline; step {r.Seconds:F2} s");
        }
        results["variants"] = perVariant;
        if (measured.TryGetValue("unchunked", out var u) && measured.TryGetValue("floor-chunk32", out var floor))
        {
            double unchunkedLogits = u.AboveBaselineMiB - floor.AboveBaselineMiB;
            var perChunk = new JsonObject();
            foreach (int c in chunks)
            {
                if (!measured.TryGetValue($"chunk{c}", out var r)) continue;
                double chunkedLogits = r.AboveBaselineMiB - floor.AboveBaselineMiB;
                perChunk[c.ToString()] = new JsonObject
                {
                    ["peakRatioToUnchunked"] = Math.Round(r.AboveBaselineMiB / u.AboveBaselineMiB, 3),
                    ["logitsMemoryAboveFloorMiB"] = Math.Round(chunkedLogits, 1),
                    ["logitsShareOfPeak"] = Math.Round(chunkedLogits / r.AboveBaselineMiB, 3),
                    ["logitsMemoryCut"] = Math.Round(1 - chunkedLogits / unchunkedLogits, 3),
                    ["stepTimeRatioToUnchunked"] = Math.Round(r.Seconds / u.Seconds, 3),
                };
                Console.WriteLine($"  chunk {c}: peak x{r.AboveBaselineMiB / u.AboveBaselineMiB:F2} of unchunked, logits' memory {chunkedLogits:F0} MiB " +
                                  $"({100 * (1 - chunkedLogits / unchunkedLogits):F0}% less than unchunked's {unchunkedLogits:F0} MiB), step time x{r.Seconds / u.Seconds:F2}");
            }
            results["unchunked"] = new JsonObject
            {
                ["logitsShareOfPeakComputed"] = Math.Round(logitsMiB / u.AboveBaselineMiB, 3),
                ["logitsMemoryAboveFloorMiB"] = Math.Round(unchunkedLogits, 1),
                ["logitsShareOfPeakMeasured"] = Math.Round(unchunkedLogits / u.AboveBaselineMiB, 3),
            };
            results["chunked"] = perChunk;
            Console.WriteLine($"  unchunked: 4·M·V = {logitsMiB:F0} MiB is {100 * logitsMiB / u.AboveBaselineMiB:F0}% of its peak above baseline; " +
                              $"its peak exceeds the floor by {unchunkedLogits:F0} MiB ({100 * unchunkedLogits / u.AboveBaselineMiB:F0}%)");
        }
        return results;
    }

    /// <summary>Runs one variant in a child process (this program, "chunked-variant CHUNK|off"); its peak RSS above baseline, peak, and median step seconds.</summary>
    static (double AboveBaselineMiB, double PeakMiB, double Seconds)? RunChild(int? chunk) =>
        ChildProcess.Run("chunked-variant", chunk?.ToString() ?? "off") is { } r && DpoSuite.ChildMemory(r) is var (peak, baseline) && r.TryGetValue("step-seconds", out double seconds)
            ? ((peak - baseline) / 1048576.0, peak / 1048576.0, seconds) : null;

    /// <summary>The child side: <see cref="Steps"/> DPO steps (chunked at <paramref name="chunkArgument"/> positions, or "off"), then VmHWM.</summary>
    internal static int RunVariant(string chunkArgument)
    {
        var chunking = chunkArgument == "off" ? new LogProbChunking(false, LogProbChunking.DefaultChunkSize) : new LogProbChunking(true, int.Parse(chunkArgument));
        long? baseline = ChildProcess.Baseline();                               // libtorch loaded: the process's baseline
        var config = Model();
        manual_seed(7);
        using var policy = CausalLM.Create(config);
        manual_seed(7);
        using var reference = CausalLM.Create(config);
        foreach (var p in reference.parameters()) p.requires_grad = false;
        var random = new Random(3);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, config.VocabSize)).ToArray();
        var examples = Enumerable.Range(0, Pairs).Select(i => new TokenizedPreference(Ids(PromptLength), Ids(CompletionLength), Ids(CompletionLength), i, i)).ToList();
        using var optimizer = optim.AdamW(policy.parameters(), lr: 1e-5);
        var objective = new DpoObjective(policy, new ReferenceLogProbs.Live(reference), new PreferenceLossOptions(), new DpoStepOptions(), padId: 0);
        var times = new List<double>();
        using (LogProbChunking.Use(chunking))
            for (int i = 0; i < Steps; i++)
            {
                var clock = Stopwatch.StartNew();
                using (var scope = NewDisposeScope())
                {
                    objective.Compute(examples).Loss.backward();
                    optimizer.step();
                    optimizer.zero_grad();
                }
                Microsoft.ML.Dpo.Runtime.AutogradHandBack.Release();
                if (i > 0) times.Add(clock.Elapsed.TotalSeconds);                 // the first step allocates the optimizer state
            }
        if (baseline is null || !ChildProcess.ReportMemory(baseline)) return 1;
        ChildProcess.Report("step-seconds", Measure.Median(times));
        return 0;
    }
}
