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
/// The DPO training step on a ~21M-parameter Llama at sequence length 256:
/// (a) achieved FLOP/s of a full step (policy forward + backward ≈ 6·N·tokens, live reference forward ≈ 2·N·tokens)
///     over the fp32 matmul throughput libtorch reaches on square 1024–2048 matrices, in the same run;
/// (b) speed-up of the library's step (chosen and rejected concatenated in one forward, precomputed reference log-probs)
///     over a naive step (separate forwards for chosen and rejected, reference recomputed every step);
/// (c) peak resident memory of each variant, each measured in a fresh child process — including LoRA-DPO (rank 8 on q and v,
///     the reference being the same model with adapters disabled) against full DPO with a frozen reference copy.
/// </summary>
internal sealed class DpoSuite : IBenchmarkSuite
{
    public string Name => "dpo";
    public string Description => "DPO step: FLOP/s vs libtorch matmul, concatenated+precomputed vs naive speed-up, LoRA vs full, peak memory";

    const int SequenceLength = 256, PromptLength = 64, Pairs = 2;

    /// <summary>The step variants; each can run alone in a child process (suite "dpo-variant NAME") for its peak memory.</summary>
    internal enum Variant { Live, Precomputed, Naive, Lora }

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
        long parameters = 0, loraTrainable = 0;
        foreach (var variant in Enum.GetValues<Variant>())
        {
            var (seconds, n) = TimeSteps(config, variant, options.Quick ? 2 : options.Repeats + 1, out long trainable);
            parameters = n;
            if (variant == Variant.Lora) loraTrainable = trainable;
            stepSeconds[variant.ToString()] = Math.Round(seconds, 4);
            Console.WriteLine($"  step {variant}: {seconds:F3} s");
        }
        results["parameters"] = parameters;
        results["stepSeconds"] = stepSeconds;

        // The issue's model: 8·N·tokens for a live-reference step (6 for the policy's forward + backward, 2 for the reference).
        long tokens = 2L * Pairs * SequenceLength;
        double liveFlops = 8.0 * parameters * tokens / (double)stepSeconds["Live"]!;
        // What the step actually executes: the trunk at every position, the (tied) output layer only at the positions that
        // predict completion tokens, and attention's two T×T products; backward ≈ 2 × forward.
        double executed = 4.0 * 2 * Pairs * ForwardFlopsPerSequence(config, parameters);
        double executedFlops = executed / (double)stepSeconds["Live"]!;
        results["achievedGflops"] = new JsonObject { ["issueModel8NT"] = Math.Round(liveFlops / 1e9, 2), ["executed"] = Math.Round(executedFlops / 1e9, 2) };
        results["flopsRatioToMatmul"] = new JsonObject { ["issueModel8NT"] = Math.Round(liveFlops / matmul, 3), ["executed"] = Math.Round(executedFlops / matmul, 3) };
        results["speedupOverNaive"] = Math.Round((double)stepSeconds["Naive"]! / (double)stepSeconds["Precomputed"]!, 3);
        Console.WriteLine($"  FLOP/s ratio (live-reference step / best matmul): {liveFlops / matmul:F3} with 8·N·tokens, {executedFlops / matmul:F3} with the FLOPs executed");
        Console.WriteLine($"  speed-up of concatenated + precomputed over naive: {(double)stepSeconds["Naive"]! / (double)stepSeconds["Precomputed"]!:F2}x");

        // Peak RSS of each variant in its own process, and the same above the process's baseline once libtorch is loaded.
        var memory = new JsonObject();
        var aboveBaseline = new JsonObject();
        foreach (var variant in Enum.GetValues<Variant>())
        {
            var measured = ChildMemory(ChildProcess.Run("dpo-variant", variant.ToString()));
            memory[variant.ToString()] = measured is { } m ? Math.Round(m.Peak / 1048576.0, 1) : null;
            aboveBaseline[variant.ToString()] = measured is { } n ? Math.Round((n.Peak - n.Baseline) / 1048576.0, 1) : null;
            Console.WriteLine($"  peak RSS {variant}: {(measured is { } q ? $"{q.Peak / 1048576.0:F0} MiB ({(q.Peak - q.Baseline) / 1048576.0:F0} MiB above the {q.Baseline / 1048576.0:F0} MiB baseline)" : "n/a")}");
        }
        results["peakRssMiB"] = memory;
        results["peakRssAboveBaselineMiB"] = aboveBaseline;
        results["lora"] = new JsonObject
        {
            ["rank"] = 8, ["targets"] = "q,v",
            ["trainableParameters"] = loraTrainable,
            ["trainableShare"] = Math.Round((double)loraTrainable / parameters, 5),
            ["stepTimeRatioToFull"] = Math.Round((double)stepSeconds["Lora"]! / (double)stepSeconds["Live"]!, 3),
            ["peakRssRatioToFull"] = memory["Lora"] is JsonNode l && memory["Live"] is JsonNode f ? Math.Round((double)l / (double)f, 3) : null,
            ["peakRssAboveBaselineRatioToFull"] = aboveBaseline["Lora"] is JsonNode la && aboveBaseline["Live"] is JsonNode fa ? Math.Round((double)la / (double)fa, 3) : null,
        };
        Console.WriteLine($"  LoRA r8 q,v: {loraTrainable:N0} trainable ({100.0 * loraTrainable / parameters:F2}%), step time x{(double)stepSeconds["Lora"]! / (double)stepSeconds["Live"]!:F2} of full, " +
                          $"peak RSS x{(memory["Lora"] is JsonNode lm && memory["Live"] is JsonNode fm ? (double)lm / (double)fm : double.NaN):F2} of full " +
                          $"(x{(aboveBaseline["Lora"] is JsonNode lb && aboveBaseline["Live"] is JsonNode fb ? (double)lb / (double)fb : double.NaN):F2} above the baseline)");
        return results;
    }

    /// <summary>Median seconds of one optimizer step of <paramref name="variant"/>, and the model's parameter count.</summary>
    internal static (double Seconds, long Parameters) TimeSteps(CausalLMConfig config, Variant variant, int repeats) => TimeSteps(config, variant, repeats, out _);

    internal static (double Seconds, long Parameters) TimeSteps(CausalLMConfig config, Variant variant, int repeats, out long trainable)
    {
        manual_seed(7);
        using var policy = CausalLM.Create(config);
        long parameters = policy.parameters().Sum(p => p.numel());
        // LoRA: adapters on q and v; the reference is the same network with adapters disabled, so no copy is made.
        var adapters = variant == Variant.Lora ? Lora.LoraAdapters.Apply(policy, new Lora.LoraOptions { Rank = 8, Alpha = 16, TargetModules = ["q", "v"] }) : null;
        manual_seed(7);
        CausalLM? reference = adapters is null ? CausalLM.Create(config) : null;
        foreach (var p in reference?.parameters() ?? []) p.requires_grad = false;
        var examples = Examples(config.VocabSize);
        var loss = new PreferenceLossOptions();
        using var optimizer = optim.AdamW(adapters?.Parameters ?? policy.parameters(), lr: 1e-5);
        trainable = adapters?.ParameterCount ?? parameters;
        ReferenceLogProbs? referenceLogProbs = variant switch
        {
            Variant.Live => new ReferenceLogProbs.Live(reference!),
            Variant.Lora => new ReferenceLogProbs.Live(policy, adapters!.Disable),
            Variant.Precomputed => ReferenceLogProbs.Precomputed.Compute(reference!, examples, Pairs, padId: 0, cacheDirectory: null, log: null, CancellationToken.None),
            _ => null,
        };
        if (variant == Variant.Precomputed) { reference!.Dispose(); reference = null; }   // freed, as the trainer does
        var objective = new DpoObjective(policy, referenceLogProbs, loss, new DpoStepOptions(), padId: 0);
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

    /// <summary>Forward FLOPs of one sequence as the library runs it (tied embeddings: the output layer is the embedding matrix).</summary>
    static double ForwardFlopsPerSequence(CausalLMConfig c, long parameters)
    {
        double outputLayer = (double)c.VocabSize * c.HiddenSize;
        double trunk = parameters - outputLayer;                                   // the embedding lookup itself costs no FLOPs
        int completion = SequenceLength - PromptLength;                           // positions that predict a completion token
        double attention = 4.0 * c.NumHiddenLayers * SequenceLength * (double)SequenceLength * c.NumAttentionHeads * c.HeadDim;
        return 2 * trunk * SequenceLength + 2 * outputLayer * completion + attention;
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

    /// <summary>The child side: two steps of one variant, then the process's peak RSS (VmHWM).</summary>
    internal static int RunVariantAndReportPeak(string name)
    {
        var variant = Enum.Parse<Variant>(name, ignoreCase: true);
        long? baseline = ChildProcess.Baseline();                               // libtorch loaded: the process's baseline
        TimeSteps(GenerationSuite.Llama21M(), variant, repeats: 2);
        return baseline is not null && ChildProcess.ReportMemory(baseline) ? 0 : 1;
    }

    /// <summary>A memory child's peak and baseline RSS (bytes), or null when it failed.</summary>
    internal static (long Peak, long Baseline)? ChildMemory(IReadOnlyDictionary<string, double>? child) =>
        child is not null && child.TryGetValue("peak-rss-bytes", out double peak) && child.TryGetValue("baseline-rss-bytes", out double baseline)
            ? ((long)peak, (long)baseline) : null;
}
