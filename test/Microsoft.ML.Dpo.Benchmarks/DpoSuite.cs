using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Benchmarks;

/// <summary>
/// The DPO training step on a ~21M-parameter Llama at sequence length 256:
/// (a) achieved FLOP/s of a full step (policy forward + backward ≈ 6·N·tokens, live reference forward ≈ 2·N·tokens)
///     over the fp32 matmul throughput libtorch reaches on square 1024–2048 matrices, in the same run;
/// (b) speed-up of the library's step (chosen and rejected concatenated in one forward, precomputed reference log-probs)
///     over a naive step (separate forwards for chosen and rejected, reference recomputed every step);
/// (c) peak resident memory of each variant, each measured in a fresh child process.
/// </summary>
internal sealed class DpoSuite : IBenchmarkSuite
{
    public string Name => "dpo";
    public string Description => "DPO step: FLOP/s vs libtorch matmul, concatenated+precomputed vs naive speed-up, peak memory";

    const int SequenceLength = 256, PromptLength = 64, Pairs = 2;

    /// <summary>The step variants; each can run alone in a child process (suite "dpo-variant NAME") for its peak memory.</summary>
    internal enum Variant { Live, Precomputed, Naive }

    public JsonObject Run(BenchmarkOptions options)
    {
        var results = new JsonObject { ["sequenceLength"] = SequenceLength, ["pairsPerStep"] = Pairs };
        var config = GenerationSuite.Llama21M();

        // (a) libtorch's own fp32 matmul throughput, this run.
        double matmul = 0;
        var matmulJson = new JsonObject();
        foreach (int n in new[] { 1024, 1536, 2048 })
        {
            using var scope = NewDisposeScope();
            var a = randn(n, n); var b = randn(n, n);
            double seconds = Measure.Median(Measure.Seconds(() => { using var s = NewDisposeScope(); a.matmul(b); }, options.Repeats + 2));
            double flops = 2.0 * n * n * n / seconds;
            matmulJson[n.ToString()] = Math.Round(flops / 1e9, 2);
            matmul = Math.Max(matmul, flops);
            Console.WriteLine($"  matmul {n}x{n}: {flops / 1e9:F1} GFLOP/s");
        }
        results["matmulGflops"] = matmulJson;

        var stepSeconds = new JsonObject();
        long parameters = 0;
        foreach (var variant in Enum.GetValues<Variant>())
        {
            var (seconds, n) = TimeSteps(config, variant, options.Quick ? 2 : options.Repeats + 1);
            parameters = n;
            stepSeconds[variant.ToString()] = Math.Round(seconds, 4);
            Console.WriteLine($"  step {variant}: {seconds:F3} s");
        }
        results["parameters"] = parameters;
        results["stepSeconds"] = stepSeconds;

        long tokens = 2L * Pairs * SequenceLength;
        double liveFlops = 8.0 * parameters * tokens / (double)stepSeconds["Live"]!;
        double precomputedFlops = 6.0 * parameters * tokens / (double)stepSeconds["Precomputed"]!;
        results["achievedGflops"] = new JsonObject { ["Live"] = Math.Round(liveFlops / 1e9, 2), ["Precomputed"] = Math.Round(precomputedFlops / 1e9, 2) };
        results["flopsRatioToMatmul"] = Math.Round(liveFlops / matmul, 3);
        results["speedupOverNaive"] = Math.Round((double)stepSeconds["Naive"]! / (double)stepSeconds["Precomputed"]!, 3);
        Console.WriteLine($"  FLOP/s ratio (live-reference step / best matmul): {liveFlops / matmul:F3}");
        Console.WriteLine($"  speed-up of concatenated + precomputed over naive: {(double)stepSeconds["Naive"]! / (double)stepSeconds["Precomputed"]!:F2}x");

        var memory = new JsonObject();
        foreach (var variant in Enum.GetValues<Variant>())
        {
            long? peak = PeakMemoryInChild(variant);
            memory[variant.ToString()] = peak is long p ? Math.Round(p / 1048576.0, 1) : null;
            Console.WriteLine($"  peak RSS {variant}: {(peak is long q ? $"{q / 1048576.0:F0} MiB" : "n/a")}");
        }
        results["peakRssMiB"] = memory;
        return results;
    }

    /// <summary>Median seconds of one optimizer step of <paramref name="variant"/>, and the model's parameter count.</summary>
    internal static (double Seconds, long Parameters) TimeSteps(CausalLMConfig config, Variant variant, int repeats)
    {
        manual_seed(7);
        using var policy = CausalLM.Create(config);
        manual_seed(7);
        CausalLM? reference = CausalLM.Create(config);
        foreach (var p in reference.parameters()) p.requires_grad = false;
        long parameters = policy.parameters().Sum(p => p.numel());
        var examples = Examples(config.VocabSize);
        var loss = new PreferenceLossOptions();
        using var optimizer = optim.AdamW(policy.parameters(), lr: 1e-5);
        ReferenceLogProbs? referenceLogProbs = variant switch
        {
            Variant.Live => new ReferenceLogProbs.Live(reference),
            Variant.Precomputed => ReferenceLogProbs.Precomputed.Compute(reference, examples, Pairs, padId: 0, cacheDirectory: null, log: null, CancellationToken.None),
            _ => null,
        };
        if (variant == Variant.Precomputed) { reference.Dispose(); reference = null; }   // freed, as the trainer does
        var objective = new DpoObjective(policy, referenceLogProbs, loss, nllWeight: 0, padId: 0);
        void Step()
        {
            using var scope = NewDisposeScope();
            Tensor value = variant == Variant.Naive ? NaiveLoss(policy, reference!, examples, loss) : objective.Compute(examples).Loss;
            value.backward();
            optimizer.step();
            optimizer.zero_grad();
        }
        try
        {
            return (Measure.Median(Measure.Seconds(Step, repeats)), parameters);
        }
        finally
        {
            reference?.Dispose();
        }
    }

    /// <summary>Separate forwards for chosen and rejected, policy and reference, every step.</summary>
    static Tensor NaiveLoss(CausalLM policy, CausalLM reference, List<TokenizedPreference> examples, PreferenceLossOptions loss)
    {
        Tensor Logps(CausalLM model, bool chosen)
        {
            using var batch = SequenceBatch.Collate(examples.Select(e => (e.Prompt, chosen ? e.Chosen : e.Rejected)).ToList(), 0, model.Device);
            return SequenceScoring.CompletionLogProbs(model, batch).Sum;
        }
        Tensor pc = Logps(policy, true), pr = Logps(policy, false);
        Tensor rc, rr;
        using (no_grad()) { rc = Logps(reference, true); rr = Logps(reference, false); }
        using var output = PreferenceLoss.Compute(loss, pc, pr, rc, rr);
        return output.Losses.mean();
    }

    static List<TokenizedPreference> Examples(int vocab)
    {
        var random = new Random(3);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, vocab)).ToArray();
        return Enumerable.Range(0, Pairs).Select(i => new TokenizedPreference(Ids(PromptLength), Ids(SequenceLength - PromptLength), Ids(SequenceLength - PromptLength), i, i)).ToList();
    }

    /// <summary>Runs one variant in a child process (this program, suite "dpo-variant") and reads its peak RSS.</summary>
    static long? PeakMemoryInChild(Variant variant)
    {
        string? self = Environment.ProcessPath;
        string? dll = typeof(DpoSuite).Assembly.Location;
        if (self is null) return null;
        var start = new ProcessStartInfo(self) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") start.ArgumentList.Add(dll);
        start.ArgumentList.Add("dpo-variant");
        start.ArgumentList.Add(variant.ToString());
        using var child = Process.Start(start)!;
        string output = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        var line = output.Split('\n').FirstOrDefault(l => l.StartsWith("peak-rss-bytes ", StringComparison.Ordinal));
        return line is null ? null : long.Parse(line["peak-rss-bytes ".Length..].Trim());
    }

    /// <summary>The child side: two steps of one variant, then the process's peak RSS (VmHWM).</summary>
    internal static int RunVariantAndReportPeak(string name)
    {
        var variant = Enum.Parse<Variant>(name, ignoreCase: true);
        TimeSteps(GenerationSuite.Llama21M(), variant, repeats: 2);
        string? hwm = File.Exists("/proc/self/status") ? File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("VmHWM:", StringComparison.Ordinal)) : null;
        if (hwm is null) return 1;
        long kib = long.Parse(hwm.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        Console.WriteLine($"peak-rss-bytes {kib * 1024}");
        return 0;
    }
}
