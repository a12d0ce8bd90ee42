using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Runtime;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// Mixed precision on this CPU (issue 18): (a) libtorch's bare matmul throughput in float32, bfloat16 and float16 (square
/// 1024 and 2048, medians), and the CPU flags that decide it (avx512_bf16, amx_bf16, avx512_fp16); (b) the DPO step
/// (live reference, 2 pairs × 256 tokens, AdamW) on a Llama of hidden 512, 6 layers, vocabulary 32,000, float32 vs bf16-mixed
/// vs fp16-mixed (with loss scaling): one model, the three kinds alternating step by step, medians; (c) each kind's peak
/// RSS in a fresh child process.
/// </summary>
internal sealed class PrecisionSuite : IBenchmarkSuite
{
    public string Name => "precision";
    public string Description => "mixed precision: bf16/fp16 vs fp32 matmul FLOP/s, DPO step time and peak RSS (hidden 512, 6 layers, vocab 32k)";

    const int SequenceLength = 256, PromptLength = 64, Pairs = 2;

    internal static CausalLMConfig Config() => new()
    {
        ModelType = "llama", VocabSize = 32000, HiddenSize = 512, IntermediateSize = 1376, NumHiddenLayers = 6, NumAttentionHeads = 8,
        NumKeyValueHeads = 8, HeadDim = 64, MaxPositionEmbeddings = 512, RmsNormEps = 1e-5, TieWordEmbeddings = true, BosTokenId = 1, EosTokenIds = [2],
    };

    static ScalarType? DType(MixedPrecisionKind kind) => kind switch
    {
        MixedPrecisionKind.BFloat16 => ScalarType.BFloat16,
        MixedPrecisionKind.Float16 => ScalarType.Float16,
        _ => null,
    };

    public JsonObject Run(BenchmarkOptions options)
    {
        var results = new JsonObject { ["sequenceLength"] = SequenceLength, ["pairsPerStep"] = Pairs, ["threads"] = torch.get_num_threads() };
        string flags = File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? "" : "";
        var cpuFlags = new JsonObject();
        foreach (string flag in new[] { "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "amx_fp16", "f16c" })
            cpuFlags[flag] = flags.Split(' ', ':').Contains(flag);
        results["cpuFlags"] = cpuFlags;
        Console.WriteLine($"  cpu flags: {cpuFlags.ToJsonString()}");

        // (a) Bare matmuls. Float16 first at 1024 only: without native fp16 arithmetic libtorch's CPU kernel is very slow.
        var matmul = new JsonObject();
        var gflops = new Dictionary<(int, ScalarType), double>();
        foreach (int n in new[] { 1024, 2048 })
        {
            var row = new JsonObject();
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
            {
                bool slowHalf = dtype == ScalarType.Float16 && n > 1024 && gflops[(1024, ScalarType.Float16)] < 0.25 * gflops[(1024, ScalarType.Float32)];
                if (slowHalf) { row[dtype.ToString()] = null; continue; }
                using var scope = NewDisposeScope();
                var a = randn(n, n).to(dtype); var b = randn(n, n).to(dtype);
                int repeats = dtype == ScalarType.Float16 ? 2 : options.Repeats + 2;
                double seconds = Measure.Median(Measure.Seconds(() => { using var s = NewDisposeScope(); a.matmul(b); }, repeats));
                gflops[(n, dtype)] = 2.0 * n * n * n / seconds / 1e9;
                row[dtype.ToString()] = Math.Round(gflops[(n, dtype)], 2);
            }
            matmul[n.ToString()] = row;
            Console.WriteLine($"  matmul {n}x{n} GFLOP/s: {row.ToJsonString()}");
        }
        results["matmulGflops"] = matmul;
        double halfShare = gflops[(1024, ScalarType.Float16)] / gflops[(1024, ScalarType.Float32)];

        // (b) DPO steps, the kinds alternating on one model. Float16 only where its matmul reaches a quarter of float32's:
        // elsewhere one step would take minutes (the estimate below scales the float32 step by the matmul ratio).
        var kinds = Enum.GetValues<MixedPrecisionKind>().Where(k => k != MixedPrecisionKind.Float16 || halfShare >= 0.25).ToArray();
        var times = kinds.ToDictionary(k => k, _ => new List<double>());
        int rounds = options.Quick ? 2 : options.Repeats + 1;
        long parameters;
        var losses = new Dictionary<MixedPrecisionKind, double>();
        using (var run = new StepRunner())
        {
            parameters = run.Parameters;
            foreach (var kind in kinds) run.Step(kind);        // warm-up of each kind
            for (int r = 0; r < rounds; r++)
                foreach (var kind in kinds)
                {
                    var clock = Stopwatch.StartNew();
                    losses[kind] = run.Step(kind);
                    times[kind].Add(clock.Elapsed.TotalSeconds);
                }
        }
        var stepSeconds = new JsonObject();
        var allSteps = new JsonObject();
        foreach (var kind in kinds)
        {
            stepSeconds[kind.ToString()] = Math.Round(Measure.Median(times[kind]), 4);
            allSteps[kind.ToString()] = Measure.ToJson(times[kind], 4);
            Console.WriteLine($"  DPO step {kind}: {Measure.Median(times[kind]):F3} s (loss {losses[kind]:F4})");
        }
        results["parameters"] = parameters;
        results["stepSeconds"] = stepSeconds;
        results["stepSecondsAll"] = allSteps;
        double fp32 = Measure.Median(times[MixedPrecisionKind.None]);
        var ratios = new JsonObject { ["BFloat16"] = Math.Round(Measure.Median(times[MixedPrecisionKind.BFloat16]) / fp32, 3) };
        if (times.TryGetValue(MixedPrecisionKind.Float16, out var half)) ratios["Float16"] = Math.Round(Measure.Median(half) / fp32, 3);
        else
        {
            ratios["Float16"] = null;
            results["float16StepNotRun"] = $"float16 matmul reaches {100 * halfShare:F1} % of float32's on this CPU (no avx512_fp16/amx_fp16); " +
                $"a step would take about {fp32 / halfShare:F0} s";
            Console.WriteLine($"  DPO step Float16: not run ({results["float16StepNotRun"]})");
        }
        results["stepTimeRatioToFloat32"] = ratios;

        // (c) Peak RSS, each kind in its own process.
        var memory = new JsonObject();
        foreach (var kind in kinds)   // the kinds timed above
        {
            long? peak = ChildProcess.Run("precision-variant", kind.ToString()) is { } r && r.TryGetValue("peak-rss-bytes", out double bytes) ? (long)bytes : null;
            memory[kind.ToString()] = peak is long p ? Math.Round(p / 1048576.0, 1) : null;
            Console.WriteLine($"  peak RSS {kind}: {(peak is long q ? $"{q / 1048576.0:F0} MiB" : "n/a")}");
        }
        results["peakRssMiB"] = memory;
        return results;
    }

    /// <summary>A policy, a live frozen reference, AdamW and the fixed examples; one DPO step at a time under any kind.</summary>
    sealed class StepRunner : IDisposable
    {
        readonly CausalLM policy, reference;
        readonly optim.Optimizer optimizer;
        readonly DpoObjective objective;
        readonly List<TokenizedPreference> examples;
        readonly LossScaler scaler = new();

        public StepRunner()
        {
            var config = Config();
            manual_seed(7);
            policy = CausalLM.Create(config);
            manual_seed(7);
            reference = CausalLM.Create(config);
            foreach (var p in reference.parameters()) p.requires_grad = false;
            Parameters = policy.parameters().Sum(p => p.numel());
            optimizer = optim.AdamW(policy.parameters(), lr: 1e-5);
            objective = new DpoObjective(policy, new ReferenceLogProbs.Live(reference), new PreferenceLossOptions(), new DpoStepOptions(), padId: 0);
            var random = new Random(3);
            int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, config.VocabSize)).ToArray();
            examples = Enumerable.Range(0, Pairs).Select(i => new TokenizedPreference(Ids(PromptLength), Ids(SequenceLength - PromptLength), Ids(SequenceLength - PromptLength), i, i)).ToList();
        }

        public long Parameters { get; }

        /// <summary>One optimizer step as the training loop takes it (fp16: scaled loss, unscaled gradients, skipped on overflow).</summary>
        public double Step(MixedPrecisionKind kind)
        {
            using var scope = NewDisposeScope();
            double loss;
            using (ComputePrecision.Use(DType(kind)))
            {
                var result = objective.Compute(examples);
                loss = result.Loss.ToDouble();
                (kind == MixedPrecisionKind.Float16 ? result.Loss * scaler.Scale : result.Loss).backward();
            }
            var parameters = policy.parameters().ToList();
            if (kind == MixedPrecisionKind.Float16) scaler.Unscale(parameters);
            double norm = nn.utils.clip_grad_norm_(parameters, 1.0);
            if (double.IsFinite(norm)) optimizer.step();
            else if (kind == MixedPrecisionKind.Float16) scaler.Overflowed();
            optimizer.zero_grad();
            return loss;
        }

        public void Dispose()
        {
            optimizer.Dispose();
            policy.Dispose();
            reference.Dispose();
        }
    }

    /// <summary>The child side: two DPO steps of one kind, then the process's peak RSS (VmHWM).</summary>
    internal static int RunVariantAndReportPeak(string name)
    {
        var kind = Enum.Parse<MixedPrecisionKind>(name, ignoreCase: true);
        using (var run = new StepRunner()) { run.Step(kind); run.Step(kind); }
        return ChildProcess.ReportMemory() ? 0 : 1;
    }
}
