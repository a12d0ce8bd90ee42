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
/// The sparse mixture-of-experts path on a Mixtral-style model (8 experts, top-2) against a dense Mistral-style twin with the
/// same number of <em>active</em> parameters per token (its MLP is k × the expert width; only the 8-wide routers differ):
/// (a) forward tokens/s of the whole model on a training-sized batch, the two models timed alternately in one run
///     (the target: the MoE's dispatch overhead ≤ 1.5×, i.e. dense tokens/s ÷ MoE tokens/s ≤ 1.5);
/// (b) the same for the feed-forward block alone (the sparse block against one dense SwiGLU of k × the expert width);
/// (c) peak resident memory of a DPO step (live frozen reference, load-balancing loss added) on each, in a fresh child process.
/// </summary>
internal sealed class MoeSuite : IBenchmarkSuite
{
    public string Name => "moe";
    public string Description => "Mixtral-style MoE vs dense twin with equal active parameters: forward tokens/s, FFN block, DPO-step peak memory";

    const int Batch = 4, SequenceLength = 256, Pairs = 2, PromptLength = 64;

    /// <summary>Mixtral-style: hidden 384, 6 layers, 6 query / 2 key-value heads, 8 experts of width 512, top-2, vocabulary 8,000.</summary>
    internal static CausalLMConfig Mixtral() => new()
    {
        ModelType = "mixtral", VocabSize = 8000, HiddenSize = 384, IntermediateSize = 512, NumHiddenLayers = 6,
        NumAttentionHeads = 6, NumKeyValueHeads = 2, HeadDim = 64, MaxPositionEmbeddings = 512, RmsNormEps = 1e-5, RopeTheta = 1e6,
        TieWordEmbeddings = true, NumExperts = 8, NumExpertsPerToken = 2, NormTopKProb = true, BosTokenId = 1, EosTokenIds = [2],
    };

    /// <summary>The dense twin: the same model with one SwiGLU MLP of width k × 512 = 1024 per layer (Mistral).</summary>
    internal static CausalLMConfig Dense()
    {
        var m = Mixtral();
        return new CausalLMConfig
        {
            ModelType = "mistral", VocabSize = m.VocabSize, HiddenSize = m.HiddenSize, IntermediateSize = m.NumExpertsPerToken * m.IntermediateSize,
            NumHiddenLayers = m.NumHiddenLayers, NumAttentionHeads = m.NumAttentionHeads, NumKeyValueHeads = m.NumKeyValueHeads, HeadDim = m.HeadDim,
            MaxPositionEmbeddings = m.MaxPositionEmbeddings, RmsNormEps = m.RmsNormEps, RopeTheta = m.RopeTheta, TieWordEmbeddings = true,
            BosTokenId = 1, EosTokenIds = [2],
        };
    }

    /// <summary>Parameters a token passes through: everything but the experts it is not routed to.</summary>
    static long ActiveParameters(CausalLM model)
    {
        var c = model.Config;
        long total = model.parameters().Sum(p => p.numel());
        if (!c.IsMixtureOfExperts) return total;
        long perExpert = 3L * c.HiddenSize * c.ExpertIntermediateSize;
        return total - (long)c.NumHiddenLayers * (c.NumExperts - c.NumExpertsPerToken) * perExpert;
    }

    public JsonObject Run(BenchmarkOptions options)
    {
        int repeats = options.Quick ? 2 : Math.Max(5, options.Repeats + 2);
        var results = new JsonObject { ["batch"] = Batch, ["sequenceLength"] = SequenceLength, ["repeats"] = repeats };

        // (a) Whole-model forward, alternating the two models so that load on the machine hits both alike.
        manual_seed(1);
        using var moe = CausalLM.Create(Mixtral());
        manual_seed(1);
        using var dense = CausalLM.Create(Dense());
        moe.eval(); dense.eval();
        var random = new Random(5);
        using var ids = tensor(Enumerable.Range(0, Batch * SequenceLength).Select(_ => (long)random.Next(3, 8000)).ToArray(), Batch, SequenceLength);
        void Forward(CausalLM model) { using var _ = no_grad(); using var s = NewDisposeScope(); model.Forward(ids); }
        var (moeSeconds, denseSeconds) = Alternate(() => Forward(moe), () => Forward(dense), repeats);
        double tokens = Batch * SequenceLength;
        double ratio = Measure.Median(moeSeconds) / Measure.Median(denseSeconds);
        results["model"] = new JsonObject
        {
            ["moeTotalParameters"] = moe.parameters().Sum(p => p.numel()),
            ["moeActiveParameters"] = ActiveParameters(moe),
            ["denseParameters"] = dense.parameters().Sum(p => p.numel()),
            ["moeTokensPerSecond"] = Math.Round(tokens / Measure.Median(moeSeconds), 1),
            ["denseTokensPerSecond"] = Math.Round(tokens / Measure.Median(denseSeconds), 1),
            ["moeSeconds"] = Measure.ToJson(moeSeconds), ["denseSeconds"] = Measure.ToJson(denseSeconds),
            ["overheadDenseOverMoeTokensPerSecond"] = Math.Round(ratio, 3),
        };
        Console.WriteLine($"  forward [{Batch}, {SequenceLength}]: MoE {tokens / Measure.Median(moeSeconds):F0} tokens/s ({ActiveParameters(moe):N0} active of {moe.parameters().Sum(p => p.numel()):N0}), " +
                          $"dense {tokens / Measure.Median(denseSeconds):F0} tokens/s ({dense.parameters().Sum(p => p.numel()):N0}): overhead {ratio:F2}x (target ≤ 1.5x)");

        // (b) The feed-forward block alone, on the same number of tokens.
        var config = Mixtral();
        manual_seed(2);
        using var block = new SparseMoeBlock(config, new RouterLogitsSink());
        using var mlp = new SwiGluExpert(config.HiddenSize, config.NumExpertsPerToken * config.IntermediateSize, SwiGluExpert.LlamaNames);
        foreach (var p in block.parameters().Concat(mlp.parameters())) using (no_grad()) nn.init.normal_(p, 0, 0.05);
        block.eval();
        using var x = randn(Batch, SequenceLength, config.HiddenSize);
        using var flat = x.reshape(Batch * SequenceLength, config.HiddenSize);
        var (blockSeconds, mlpSeconds) = Alternate(
            () => { using var _ = no_grad(); using var s = NewDisposeScope(); block.forward(x); },
            () => { using var _ = no_grad(); using var s = NewDisposeScope(); mlp.forward(flat); }, repeats * 3);
        double blockRatio = Measure.Median(blockSeconds) / Measure.Median(mlpSeconds);
        results["ffnBlock"] = new JsonObject
        {
            ["sparseMilliseconds"] = Math.Round(1000 * Measure.Median(blockSeconds), 3),
            ["denseMilliseconds"] = Math.Round(1000 * Measure.Median(mlpSeconds), 3),
            ["overhead"] = Math.Round(blockRatio, 3),
        };
        Console.WriteLine($"  FFN block on {Batch * SequenceLength} tokens: sparse {1000 * Measure.Median(blockSeconds):F2} ms, dense SwiGLU {1000 * Measure.Median(mlpSeconds):F2} ms: {blockRatio:F2}x");

        // (c) Peak RSS of a DPO step on each, in fresh processes.
        var memory = new JsonObject();
        foreach (string which in new[] { "moe", "dense" })
        {
            var measured = DpoSuite.ChildMemory(ChildProcess.Run("moe-dpo-step", which));
            memory[which] = measured is { } m ? new JsonObject { ["peakMiB"] = Math.Round(m.Peak / 1048576.0, 1), ["baselineMiB"] = Math.Round(m.Baseline / 1048576.0, 1) } : null;
            Console.WriteLine($"  DPO step peak RSS {which}: {(measured is { } q ? $"{q.Peak / 1048576.0:F0} MiB ({(q.Peak - q.Baseline) / 1048576.0:F0} MiB above the {q.Baseline / 1048576.0:F0} MiB baseline)" : "n/a")}");
        }
        results["dpoStepPeakRss"] = memory;
        results["dpoStep"] = new JsonObject { ["pairs"] = Pairs, ["sequenceLength"] = SequenceLength, ["reference"] = "live frozen copy", ["auxLoss"] = "router_aux_loss_coef 0.001 (MoE)" };
        return results;
    }

    /// <summary>Times <paramref name="a"/> and <paramref name="b"/> alternately (after one warm-up each); all times in seconds.</summary>
    static (double[] A, double[] B) Alternate(Action a, Action b, int repeats)
    {
        a(); b();
        var ta = new double[repeats];
        var tb = new double[repeats];
        for (int i = 0; i < repeats; i++)
        {
            ta[i] = Measure.Seconds(a, 1, warmup: 0)[0];
            tb[i] = Measure.Seconds(b, 1, warmup: 0)[0];
        }
        return (ta, tb);
    }

    /// <summary>Two full-DPO steps (policy trained, frozen live reference copy; the MoE with its load-balancing loss).</summary>
    static void DpoSteps(CausalLMConfig config)
    {
        manual_seed(7);
        using var policy = CausalLM.Create(config);
        manual_seed(7);
        using var reference = CausalLM.Create(config);
        foreach (var p in reference.parameters()) p.requires_grad = false;
        var random = new Random(3);
        int[] Ids(int n) => Enumerable.Range(0, n).Select(_ => random.Next(3, config.VocabSize)).ToArray();
        var examples = Enumerable.Range(0, Pairs).Select(i => new TokenizedPreference(Ids(PromptLength), Ids(SequenceLength - PromptLength), Ids(SequenceLength - PromptLength), i, i)).ToList();
        var objective = RouterAuxLossObjective<TokenizedPreference>.Wrap(
            new DpoObjective(policy, new ReferenceLogProbs.Live(reference), new PreferenceLossOptions(), new DpoStepOptions(), padId: 0), policy, null, 0);
        using var optimizer = optim.AdamW(policy.parameters(), lr: 1e-5);
        policy.train();
        for (int step = 0; step < 2; step++)
        {
            using var scope = NewDisposeScope();
            objective.Compute(examples).Loss.backward();
            optimizer.step();
            optimizer.zero_grad();
        }
    }

    /// <summary>The child side of (c): "moe" or "dense".</summary>
    internal static int RunDpoStepAndReportPeak(string which)
    {
        long? baseline = ChildProcess.Baseline();                               // libtorch loaded: the process's baseline
        DpoSteps(which == "moe" ? Mixtral() : Dense());
        return baseline is not null && ChildProcess.ReportMemory(baseline) ? 0 : 1;
    }
}
