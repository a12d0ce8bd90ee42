using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Runtime;
using Microsoft.ML.Dpo.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Issue 18 at the sizes users bring: random-weight models with the exact shapes of Qwen2.5-0.5B and Llama-3.2-1B, DPO steps
/// of 2 pairs × 512 and × 1024 tokens (half prompt, half completion, as TRL's defaults of max_length 1024 and
/// max_prompt_length 512), float32, AdamW, the trainer's default reference (full: a frozen copy, live; LoRA: the same network
/// with its adapters off, live). Each variant (full or LoRA rank 16 on all linear layers; gradient checkpointing on or off;
/// chunked log-probs on or off; padding-free or padded) runs in a fresh child process, which reports its peak RSS and its
/// step times measured interleaved with a matmul of the model's own MLP shape ([tokens, hidden] × [hidden, intermediate]):
/// matmul, step, matmul, step, …, so the step's model FLOP/s (<see cref="ModelFlops"/>) over libtorch's matmul FLOP/s is a
/// ratio of medians taken in the same minutes. Then decoding of the 0.5B shape: batch-1 tokens/s against the bound of the
/// memory bandwidth measured in the same run over the weight bytes, and K = 8 sampled completions of one prompt against batch 1.
/// </summary>
internal sealed class ScaleSuite : IBenchmarkSuite
{
    public string Name => "scale";
    public string Description => "0.5B/1B shapes: DPO peak RSS and step time (full vs LoRA, checkpointing, chunking, packing), step/matmul FLOP/s, decode vs bandwidth";

    /// <summary>Qwen2.5-0.5B's shape (494M parameters, tied).</summary>
    internal static CausalLMConfig Qwen05B() => new()
    {
        ModelType = "qwen2", VocabSize = 151_936, HiddenSize = 896, IntermediateSize = 4864, NumHiddenLayers = 24,
        NumAttentionHeads = 14, NumKeyValueHeads = 2, HeadDim = 64, MaxPositionEmbeddings = 32_768, RmsNormEps = 1e-6,
        RopeTheta = 1_000_000, TieWordEmbeddings = true, AttentionBias = true, BosTokenId = 151_643, EosTokenIds = [151_645],
    };

    /// <summary>Llama-3.2-1B's shape (1.24B parameters, tied; its llama3 rope scaling changes the angles, not the cost, and is left out).</summary>
    internal static CausalLMConfig Llama1B() => new()
    {
        ModelType = "llama", VocabSize = 128_256, HiddenSize = 2048, IntermediateSize = 8192, NumHiddenLayers = 16,
        NumAttentionHeads = 32, NumKeyValueHeads = 8, HeadDim = 64, MaxPositionEmbeddings = 131_072, RmsNormEps = 1e-5,
        RopeTheta = 500_000, TieWordEmbeddings = true, BosTokenId = 128_000, EosTokenIds = [128_001],
    };

    static CausalLMConfig Shape(string name) => name switch
    {
        "qwen0.5b" => Qwen05B(),
        "llama1b" => Llama1B(),
        _ => throw new ArgumentException($"Unknown shape '{name}'."),
    };

    /// <summary>
    /// One child run: shape, tokens per sequence, full or LoRA, and the three toggles; "lengths" 0 means every sequence has
    /// <see cref="Tokens"/> tokens, otherwise sequence lengths are drawn uniformly from 32 to <see cref="Tokens"/> (seeded).
    /// </summary>
    internal sealed record Variant(string Model, int Tokens, bool Lora, bool Checkpointing, bool Chunked, bool PaddingFree, bool Skewed, bool Release, int Steps)
    {
        public string Name => $"{Model}-{2}x{Tokens}{(Skewed ? "skewed" : "")}-{(Lora ? "lora16" : "full")}-ckpt{(Checkpointing ? "on" : "off")}-chunk{(Chunked ? "on" : "off")}" +
                              $"-{(PaddingFree ? "packed" : "padded")}-release{(Release ? "on" : "off")}";

        public string Argument => string.Join(",", Model, Tokens, Lora ? 1 : 0, Checkpointing ? 1 : 0, Chunked ? 1 : 0, PaddingFree ? 1 : 0, Skewed ? 1 : 0, Release ? 1 : 0, Steps);

        public static Variant Parse(string argument)
        {
            var f = argument.Split(',');
            return new Variant(f[0], int.Parse(f[1]), f[2] == "1", f[3] == "1", f[4] == "1", f[5] == "1", f[6] == "1", f[7] == "1", int.Parse(f[8]));
        }
    }

    const int Pairs = 2;

    public JsonObject Run(BenchmarkOptions options)
    {
        // Steps per child: the first is a warm-up (optimizer state, allocator), not timed. 2 × 1024 and the 1B shape take
        // minutes a step on 2 cores, so they time one step; the 2 × 512 comparisons time two.
        var plan = new List<Variant>();
        void Add(string model, int tokens, bool lora, bool ckpt = true, bool chunk = true, bool packed = false, bool skewed = false, bool release = true, int steps = 2) =>
            plan.Add(new Variant(model, tokens, lora, ckpt, chunk, packed, skewed, release, options.Quick ? 2 : steps));
        if (options.Quick)
        {
            Add("qwen0.5b", 256, lora: true);
        }
        else
        {
            // 0.5B at 2 × 1024, everything on: LoRA and full (without checkpointing 2 × 1024 does not fit this 24 GB machine).
            Add("qwen0.5b", 1024, lora: true);
            Add("qwen0.5b", 1024, lora: false);
            // 0.5B at 2 × 512: everything on, then each mechanism off in turn.
            Add("qwen0.5b", 512, lora: true, steps: 3);
            Add("qwen0.5b", 512, lora: true, release: false, steps: 3);
            Add("qwen0.5b", 512, lora: true, ckpt: false, steps: 3);
            Add("qwen0.5b", 512, lora: true, chunk: false, steps: 3);
            Add("qwen0.5b", 512, lora: false, steps: 3);
            // Length-skewed pairs (32–1024 tokens), padded vs padding-free.
            Add("qwen0.5b", 1024, lora: true, skewed: true);
            Add("qwen0.5b", 1024, lora: true, packed: true, skewed: true);
            // 1B: LoRA with everything on (full DPO's float32 policy, gradients, AdamW state and reference copy are 5 × 4.9 GB).
            Add("llama1b", 512, lora: true);
        }
        if (Environment.GetEnvironmentVariable("MLDPO_SCALE_ONLY") is { Length: > 0 } only)    // e.g. "qwen0.5b-2x512" to run a subset
            plan = plan.Where(v => v.Name.Contains(only, StringComparison.Ordinal)).ToList();

        var results = new JsonObject
        {
            ["step"] = $"DPO (sigmoid), {Pairs} pairs, half prompt + half completion, float32 weights, AdamW; LoRA rank 16 alpha 32 on all linear layers; the trainer's default live reference",
        };
        var variants = new JsonObject();
        var measured = new Dictionary<string, IReadOnlyDictionary<string, double>>();
        foreach (var v in plan)
        {
            Console.WriteLine($"  {v.Name} ...");
            var r = ChildProcess.Run("scale-variant", v.Argument);
            if (r is null || !r.ContainsKey("step-seconds")) { Console.WriteLine($"  {v.Name}: the child process failed"); variants[v.Name] = new JsonObject { ["failed"] = true }; continue; }
            measured[v.Name] = r;
            var o = new JsonObject { ["timedSteps"] = v.Steps - 1 };
            foreach (var (key, value) in r) o[key] = Math.Round(value, key.EndsWith("bytes", StringComparison.Ordinal) ? 0 : 4);
            o["peakRssMiB"] = Math.Round(r["peak-rss-bytes"] / 1048576.0, 1);
            o["flopsRatioToMatmul"] = Math.Round(r["model-flops"] / r["step-seconds"] / r["matmul-flops-per-second"], 3);
            variants[v.Name] = o;
            Console.WriteLine($"  {v.Name} json: {o.ToJsonString()}");
            Console.WriteLine($"  {v.Name}: peak RSS {r["peak-rss-bytes"] / 1048576.0:F0} MiB, step {r["step-seconds"]:F1} s, " +
                              $"{r["model-flops"] / r["step-seconds"] / 1e9:F1} model GFLOP/s = {r["model-flops"] / r["step-seconds"] / r["matmul-flops-per-second"]:F2} of matmul's {r["matmul-flops-per-second"] / 1e9:F1}");
        }
        results["variants"] = variants;

        // The ratios the issue asks for, from the variants that ran.
        var ratios = new JsonObject();
        void Ratio(string name, string a, string b, string key)
        {
            if (!measured.TryGetValue(a, out var x) || !measured.TryGetValue(b, out var y)) return;
            double value = key == "tokens-per-second" ? x["real-tokens"] / x["step-seconds"] / (y["real-tokens"] / y["step-seconds"]) : x[key] / y[key];
            ratios[name] = Math.Round(value, 3);
            Console.WriteLine($"  {name}: {value:F3}");
        }
        string V(string model, int tokens, bool lora, bool ckpt = true, bool chunk = true, bool packed = false, bool skewed = false, bool release = true) =>
            new Variant(model, tokens, lora, ckpt, chunk, packed, skewed, release, 0).Name;
        Ratio("loraOverFullPeakRss_0.5b_2x1024", V("qwen0.5b", 1024, true), V("qwen0.5b", 1024, false), "peak-rss-bytes");
        Ratio("loraOverFullPeakRss_0.5b_2x512", V("qwen0.5b", 512, true), V("qwen0.5b", 512, false), "peak-rss-bytes");
        Ratio("checkpointingStepTime_lora_0.5b_2x512", V("qwen0.5b", 512, true), V("qwen0.5b", 512, true, ckpt: false), "step-seconds");
        Ratio("checkpointingPeakRss_lora_0.5b_2x512", V("qwen0.5b", 512, true), V("qwen0.5b", 512, true, ckpt: false), "peak-rss-bytes");
        Ratio("chunkedPeakRss_lora_0.5b_2x512", V("qwen0.5b", 512, true), V("qwen0.5b", 512, true, chunk: false), "peak-rss-bytes");
        Ratio("chunkedStepTime_lora_0.5b_2x512", V("qwen0.5b", 512, true), V("qwen0.5b", 512, true, chunk: false), "step-seconds");
        Ratio("releaseFreedMemoryPeakRss_lora_0.5b_2x512", V("qwen0.5b", 512, true), V("qwen0.5b", 512, true, release: false), "peak-rss-bytes");
        Ratio("releaseFreedMemoryStepTime_lora_0.5b_2x512", V("qwen0.5b", 512, true), V("qwen0.5b", 512, true, release: false), "step-seconds");
        Ratio("paddingFreeOverPaddedTokensPerSecond_0.5b_skewed", V("qwen0.5b", 1024, true, packed: true, skewed: true), V("qwen0.5b", 1024, true, skewed: true), "tokens-per-second");
        // The logits' share of the peak, unchunked vs chunked: [M, V] float32 logits (and log_softmax's copy) against the peak above baseline.
        if (measured.TryGetValue(V("qwen0.5b", 512, true, chunk: false), out var unchunked) && measured.TryGetValue(V("qwen0.5b", 512, true), out var chunked))
        {
            double logitsBytes = 4.0 * 2 * Pairs * 256 * Qwen05B().VocabSize;
            double unchunkedAbove = unchunked["peak-rss-bytes"] - unchunked["baseline-rss-bytes"], chunkedAbove = chunked["peak-rss-bytes"] - chunked["baseline-rss-bytes"];
            ratios["logitsMiB_0.5b_2x512"] = Math.Round(logitsBytes / 1048576.0, 1);
            ratios["logitsMemory_unchunkedMinusChunkedMiB"] = Math.Round((unchunkedAbove - chunkedAbove) / 1048576.0, 1);
            ratios["logitsShareOfPeakUnchunked"] = Math.Round((unchunkedAbove - chunkedAbove) / unchunkedAbove, 3);
        }
        results["ratios"] = ratios;

        if (!options.Quick && Environment.GetEnvironmentVariable("MLDPO_SCALE_ONLY") is not { Length: > 0 })
            results["decode"] = ChildProcess.Run("scale-decode", "qwen0.5b") is { } d ? Decode(d) : new JsonObject { ["failed"] = true };
        if (!options.Quick) results["load"] = Load("qwen0.5b");
        return results;
    }

    /// <summary>
    /// Peak RSS of loading a saved float32 checkpoint of <paramref name="model"/>'s shape (Hugging Face layout, one
    /// safetensors file), in a fresh process, against the file's size: streaming puts each tensor into its parameter.
    /// </summary>
    static JsonObject Load(string model)
    {
        string folder = Path.Combine(Path.GetTempPath(), $"mldpo-scale-load-{Environment.ProcessId}");
        try
        {
            if (ChildProcess.Run("scale-load", $"save,{model},{folder}") is null) return new JsonObject { ["failed"] = "save" };
            if (ChildProcess.Run("scale-load", $"load,{model},{folder}") is not { } r || DpoSuite.ChildMemory(r) is not var (peak, baseline))
                return new JsonObject { ["failed"] = "load" };
            double fileBytes = Directory.GetFiles(folder, "*.safetensors").Sum(f => new FileInfo(f).Length);
            Console.WriteLine($"  load {model}: {fileBytes / 1048576.0:F0} MiB of safetensors; peak RSS {peak / 1048576.0:F0} MiB ({(peak - baseline) / 1048576.0:F0} MiB above the baseline, " +
                              $"{(peak - baseline) / fileBytes:F2}x the file) in {r["load-seconds"]:F1} s");
            return new JsonObject
            {
                ["safetensorsMiB"] = Math.Round(fileBytes / 1048576.0, 1),
                ["peakRssMiB"] = Math.Round(peak / 1048576.0, 1),
                ["peakRssAboveBaselineMiB"] = Math.Round((peak - baseline) / 1048576.0, 1),
                ["aboveBaselineOverFile"] = Math.Round((peak - baseline) / fileBytes, 3),
                ["loadSeconds"] = Math.Round(r["load-seconds"], 2),
            };
        }
        finally
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>The child side of <see cref="Load"/>: "save,SHAPE,FOLDER" writes a random model; "load,SHAPE,FOLDER" loads it and reports its peak.</summary>
    internal static int RunLoad(string argument)
    {
        var f = argument.Split(',', 3);
        if (f[0] == "save")
        {
            manual_seed(7);
            using var created = CausalLM.Create(Shape(f[1]));
            Checkpoints.HuggingFaceCheckpoint.Save(created, f[2]);
            return 0;
        }
        long? baseline = ChildProcess.Baseline();                               // libtorch loaded: the process's baseline
        var clock = Stopwatch.StartNew();
        using var loaded = Checkpoints.HuggingFaceCheckpoint.Load(f[2]);
        double seconds = clock.Elapsed.TotalSeconds;
        if (baseline is null || !ChildProcess.ReportMemory(baseline)) return 1;
        ChildProcess.Report("load-seconds", seconds);
        return 0;
    }

    static JsonObject Decode(IReadOnlyDictionary<string, double> d)
    {
        double bound = d["bandwidth-bytes-per-second"] / d["weight-bytes"];
        double b1 = d["batch1-tokens-per-second"], k8 = d["k8-tokens-per-second"];
        Console.WriteLine($"  decode 0.5B: bandwidth {d["bandwidth-bytes-per-second"] / 1e9:F1} GB/s over {d["weight-bytes"] / 1e9:F2} GB of weights = {bound:F2} tokens/s bound; " +
                          $"batch 1 {b1:F2} tokens/s = {b1 / bound:F2} of the bound; K = 8 sampled {k8:F2} tokens/s = {k8 / d["batch1-sampled-tokens-per-second"]:F2}x batch 1 sampled");
        return new JsonObject
        {
            ["bandwidthGBps"] = Math.Round(d["bandwidth-bytes-per-second"] / 1e9, 2),
            ["weightGB"] = Math.Round(d["weight-bytes"] / 1e9, 3),
            ["boundTokensPerSecond"] = Math.Round(bound, 3),
            ["batch1GreedyTokensPerSecond"] = Math.Round(b1, 3),
            ["batch1OverBound"] = Math.Round(b1 / bound, 3),
            ["batch1SampledTokensPerSecond"] = Math.Round(d["batch1-sampled-tokens-per-second"], 3),
            ["k8SampledTokensPerSecond"] = Math.Round(k8, 3),
            ["k8OverBatch1"] = Math.Round(k8 / d["batch1-sampled-tokens-per-second"], 3),
            ["newTokens"] = d["new-tokens"],
        };
    }

    /// <summary>The child side of one variant: the model, the pairs, <see cref="Variant.Steps"/> steps interleaved with matmuls, then the key-value lines.</summary>
    internal static int RunVariant(string argument)
    {
        var v = Variant.Parse(argument);
        if (v.Release && !ProcessMemory.ReleaseFreedBlocks()) return 1;          // TrainingOptions.ReleaseFreedMemory
        long? baseline = ChildProcess.Baseline();                               // libtorch loaded: the process's baseline
        var config = Shape(v.Model);
        manual_seed(7);
        using var policy = CausalLM.Create(config);
        Trace("policy created");
        var adapters = v.Lora ? Lora.LoraAdapters.Apply(policy, new Lora.LoraOptions { Rank = 16, Alpha = 32, TargetModules = ["all-linear"] }) : null;
        CausalLM? reference = null;
        if (adapters is null)
        {
            manual_seed(7);
            reference = CausalLM.Create(config);
            foreach (var p in reference.parameters()) p.requires_grad = false;
        }
        var random = new Random(18);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, config.VocabSize)).ToArray();
        int half = v.Tokens / 2;
        var pairs = Enumerable.Range(0, Pairs).Select(i =>
        {
            if (!v.Skewed) return new TokenizedPreference(Ids(half), Ids(half), Ids(half), i, i);
            int prompt = random.Next(16, 33);
            return new TokenizedPreference(Ids(prompt), Ids(random.Next(32, v.Tokens + 1) - prompt), Ids(random.Next(32, v.Tokens + 1) - prompt), i, i);
        }).ToList();
        using var optimizer = new AdamWOptimizer(adapters?.Parameters ?? policy.parameters(), 1e-6, 0);   // the trainer's optimizer
        var referenceLogProbs = adapters is not null ? new ReferenceLogProbs.Live(policy, adapters.Disable) : new ReferenceLogProbs.Live(reference!);
        var objective = new DpoObjective(policy, referenceLogProbs, new PreferenceLossOptions(), new DpoStepOptions(PaddingFree: v.PaddingFree), padId: 0);
        Trace("reference and optimizer ready");
        long realTokens = pairs.Sum(p => 2L * p.Prompt.Length + p.Chosen.Length + p.Rejected.Length);
        double modelFlops = objective.Flops(pairs)!.Value.Total;

        // libtorch's matmul at the model's MLP shape for this many tokens (the step's largest matmuls).
        using var a = randn(realTokens, config.HiddenSize);
        using var b = randn(config.HiddenSize, config.IntermediateSize);
        double matmulFlops = 2.0 * realTokens * config.HiddenSize * config.IntermediateSize;
        double Matmul()
        {
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < 3; i++) { using var s = NewDisposeScope(); a.matmul(b); }
            return matmulFlops * 3 / clock.Elapsed.TotalSeconds;
        }

        var stepTimes = new List<double>();
        var matmulRates = new List<double>();
        using (LogProbChunking.Use(new LogProbChunking(v.Chunked, LogProbChunking.DefaultChunkSize)))
        using (Checkpointing.Enable(v.Checkpointing))
            for (int i = 0; i < v.Steps; i++)
            {
                double rate = Matmul();
                GC.Collect();
                GC.WaitForPendingFinalizers();
                var clock = Stopwatch.StartNew();
                using (var scope = NewDisposeScope())
                {
                    objective.Compute(pairs).Loss.backward();
                    Checkpointing.ThrowIfBackwardFailed();
                    optimizer.step();
                    optimizer.zero_grad();
                }
                AutogradHandBack.Release();
                if (i == 0) continue;                                               // warm-up: optimizer state, allocator
                stepTimes.Add(clock.Elapsed.TotalSeconds);
                matmulRates.Add(rate);
                Trace($"step {i}: {clock.Elapsed.TotalSeconds:F1} s");
            }
        reference?.Dispose();
        if (baseline is null || !ChildProcess.ReportMemory(baseline)) return 1;
        ChildProcess.Report("step-seconds", Measure.Median(stepTimes));
        ChildProcess.Report("matmul-flops-per-second", Measure.Median(matmulRates));
        ChildProcess.Report("model-flops", modelFlops);
        ChildProcess.Report("real-tokens", realTokens);
        long parameters = policy.parameters().Sum(p => p.numel());
        ChildProcess.Report("parameters", parameters);
        ChildProcess.Report("trainable-parameters", adapters?.ParameterCount ?? parameters);
        return 0;
    }

    /// <summary>Resident and peak memory at a stage of a child run, on standard error (the parent ignores it).</summary>
    static void Trace(string stage) =>
        Console.Error.WriteLine($"{stage}: RSS {ProcessMemory.ResidentBytes() / 1048576.0:F0} MiB, peak {ProcessMemory.PeakResidentBytes() / 1048576.0:F0} MiB");

    /// <summary>
    /// The child side of the decode measurement: read bandwidth (a sum over a 1 GiB float32 tensor, median of 5), then greedy
    /// batch-1 decoding, sampled batch-1 decoding and K = 8 sampled completions of one prompt, each of 32 new tokens after an
    /// 8-token prompt, through the <see cref="TextGenerator"/> (KV cache), medians of 3 alternated runs.
    /// </summary>
    internal static int RunDecode(string model)
    {
        var config = Shape(model);
        manual_seed(7);
        using var network = CausalLM.Create(config);
        network.eval();
        double weightBytes = network.parameters().Sum(p => (double)p.numel() * p.element_size());

        var bandwidth = new List<double>();
        using (var big = ones(256L * 1024 * 1024))
        {
            big.sum().Dispose();
            for (int i = 0; i < 5; i++)
            {
                var clock = Stopwatch.StartNew();
                big.sum().Dispose();
                bandwidth.Add(big.numel() * 4.0 / clock.Elapsed.TotalSeconds);
            }
        }

        const int newTokens = 32;
        int[] prompt = Enumerable.Range(0, 8).Select(i => 3 + i * 1009 % (config.VocabSize - 3)).ToArray();
        var generator = new TextGenerator(network);
        var greedy = new GenerationOptions { MaxNewTokens = newTokens, StopAtEos = false };
        var sampled = new GenerationOptions { MaxNewTokens = newTokens, StopAtEos = false, Temperature = 1.0, Seed = 5 };
        double Rate(int[][] prompts, GenerationOptions o)
        {
            var clock = Stopwatch.StartNew();
            var outputs = generator.Generate(prompts, o);
            return outputs.Sum(t => t.Length) / clock.Elapsed.TotalSeconds;
        }
        Rate([prompt], new GenerationOptions { MaxNewTokens = 4, StopAtEos = false });                          // warm-up
        var b1 = new List<double>(); var s1 = new List<double>(); var k8 = new List<double>();
        for (int r = 0; r < 3; r++)
        {
            b1.Add(Rate([prompt], greedy));
            s1.Add(Rate([prompt], sampled));
            k8.Add(Rate(Enumerable.Repeat(prompt, 8).ToArray(), sampled));
        }
        ChildProcess.Report("bandwidth-bytes-per-second", Measure.Median(bandwidth));
        ChildProcess.Report("weight-bytes", weightBytes);
        ChildProcess.Report("batch1-tokens-per-second", Measure.Median(b1));
        ChildProcess.Report("batch1-sampled-tokens-per-second", Measure.Median(s1));
        ChildProcess.Report("k8-tokens-per-second", Measure.Median(k8));
        ChildProcess.Report("new-tokens", newTokens);
        return 0;
    }
}
