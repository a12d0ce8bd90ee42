using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Training;

/// <summary>
/// Gradient checkpointing (<see cref="Checkpointing"/>, <see cref="TrainingOptions.GradientCheckpointing"/>): in float64,
/// the gradient of every parameter after a checkpointed SFT or DPO step equals the plain backward's (Llama, GPT-2, Qwen3,
/// Gemma 2, Mixtral with its load-balancing and z losses and router jitter; full weights and LoRA with dropout), a short
/// training run ends with the same weights, router logits are recorded once, nothing leaks, and a KV cache is refused.
/// </summary>
[TestClass]
public sealed class GradientCheckpointingTests
{
    // Bitwise: the recomputation runs the same kernels on the same inputs (and replays the same random draws), and each
    // gradient is summed in the same order, so nothing looser is needed (1e-12 was the first bound tried; 0 holds on every case).
    const double Tolerance = 0;

    static readonly List<TokenizedCompletion> Completions =
    [
        new([1, 5, 6, 7], [8, 9, 2], 0, 0),
        new([1, 4], [3, 11, 12, 13, 2], 1, 1),
        new([1, 20, 21], [22, 2], 2, 2),
    ];

    static readonly List<TokenizedPreference> Pairs =
    [
        new([1, 5, 6], [7, 8, 2], [9, 2], 0, 0),
        new([1, 4], [3, 3, 2], [10, 6, 5, 2], 1, 1),
    ];

    public static IEnumerable<object[]> Cases =>
        from arch in new[] { "llama", "gpt2", "qwen3", "gemma2", "mixtral" }
        from objective in new[] { "sft", "dpo" }
        from lora in new[] { false, true }
        select new object[] { arch, objective, lora };

    static CausalLMConfig Config(string arch) => arch switch
    {
        "llama" => TinyModels.Llama(tied: false),
        "gpt2" => TinyModels.Gpt2(),
        "qwen3" => TinyModels.Qwen3(),
        "gemma2" => TinyModels.Gemma2(),
        "mixtral" => With(MoeModels.Mixtral(), c => c.RouterJitterNoise = 0.05),   // random draws inside the layer, replayed on recompute
        _ => throw new ArgumentException(arch),
    };

    static CausalLMConfig With(CausalLMConfig c, Action<CausalLMConfig> change)
    {
        change(c);
        return c;
    }

    /// <summary>A float64 model in train mode; with LoRA (all linear layers, routers too, dropout 0.1) B is randomised so every adapter gets a gradient.</summary>
    static CausalLM Model(string arch, bool lora, int seed = 5)
    {
        manual_seed(seed);
        var model = CausalLM.Create(Config(arch), ScalarType.Float64);
        if (lora)
        {
            var targets = arch == "mixtral" ? new[] { "all-linear", "router" } : new[] { "all-linear" };
            var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 2, Alpha = 4, Dropout = 0.1, TargetModules = targets, Seed = 3 });
            using var noGrad = no_grad();
            foreach (var b in adapters.Parameters.Where((_, i) => i % 2 == 1)) b.normal_(0, 0.2);
        }
        model.train();
        return model;
    }

    static ITrainingObjective<TokenizedCompletion> Sft(CausalLM model) =>
        RouterAuxLossObjective<TokenizedCompletion>.Wrap(new SftObjective(model, 0, completionOnlyLoss: true), model, 0.02, 0.001);

    static ITrainingObjective<TokenizedPreference> Dpo(CausalLM policy, CausalLM reference) =>
        RouterAuxLossObjective<TokenizedPreference>.Wrap(new DpoObjective(policy, new ReferenceLogProbs.Live(reference),
            new PreferenceLossOptions { Beta = 0.3 }, new DpoStepOptions(), 0), policy, 0.02, 0.001);

    /// <summary>The loss and every trainable parameter's gradient (null when it got none) after one backward pass.</summary>
    static (double Loss, Dictionary<string, double[]?> Grads) Step(CausalLM model, Func<ObjectiveResult> compute, bool checkpointing, int seed)
    {
        foreach (var p in model.parameters()) p.grad = null;
        using var scope = NewDisposeScope();
        manual_seed(seed);   // the same dropout and jitter draws in both runs
        ObjectiveResult result;
        using (Checkpointing.Enable(checkpointing)) result = compute();
        result.Loss.backward();
        Checkpointing.ThrowIfBackwardFailed();
        var grads = model.named_parameters().Where(p => p.parameter.requires_grad)
            .ToDictionary(p => p.name, p => p.parameter.grad is { } g ? g.data<double>().ToArray() : null);
        return (result.Loss.ToDouble(), grads);
    }

    static void AssertSameGradients(Dictionary<string, double[]?> plain, Dictionary<string, double[]?> checkpointed, string what)
    {
        CollectionAssert.AreEquivalent(plain.Keys.ToList(), checkpointed.Keys.ToList(), what + ": parameters");
        int withGrad = 0;
        foreach (var (name, expected) in plain)
        {
            var actual = checkpointed[name];
            Assert.AreEqual(expected is null, actual is null, $"{what}: {name} has a gradient in only one of the runs");
            if (expected is null) continue;
            withGrad++;
            double diff = expected.Zip(actual!, (a, b) => Math.Abs(a - b)).Max();
            Assert.IsTrue(diff <= Tolerance, $"{what}: {name} max |Δgrad| = {diff:G3} > {Tolerance}");
        }
        Assert.IsGreaterThan(0, withGrad, what + ": no parameter got a gradient");
    }

    [TestMethod]
    [DynamicData(nameof(Cases))]
    public void CheckpointedGradients_EqualThePlainBackward(string arch, string objective, bool lora)
    {
        using var model = Model(arch, lora);
        using var reference = objective == "dpo" ? Model(arch, lora: false, seed: 9) : null;
        Func<ObjectiveResult> compute = objective == "sft"
            ? () => Sft(model).Compute(Completions)
            : () => Dpo(model, reference!).Compute(Pairs);
        var (plainLoss, plain) = Step(model, compute, checkpointing: false, seed: 17);
        long recomputed = Checkpointing.RecomputedLayers;
        var (checkpointedLoss, checkpointed) = Step(model, compute, checkpointing: true, seed: 17);
        Assert.AreEqual(model.Config.NumHiddenLayers, Checkpointing.RecomputedLayers - recomputed, "layers recomputed by the backward pass (one policy forward)");
        Assert.AreEqual(plainLoss, checkpointedLoss, Tolerance, "loss");
        AssertSameGradients(plain, checkpointed, $"{arch} {objective}{(lora ? " LoRA" : "")}");
        if (lora)   // every adapter matrix was reached (layer 0's input needs no gradient: the frozen embedding)
            Assert.IsTrue(plain.Where(kv => kv.Key.Contains("lora_")).All(kv => kv.Value is not null && kv.Value.Any(v => v != 0)), "an adapter got no gradient");
        // The random stream continues as it would without checkpointing (the recomputation restored it).
        manual_seed(17);
        using (var scope = NewDisposeScope()) { using (Checkpointing.Enable()) Sft(model).Compute(Completions).Loss.backward(); }
        double afterCheckpointed = rand(1).item<float>();
        manual_seed(17);
        using (var scope = NewDisposeScope()) Sft(model).Compute(Completions).Loss.backward();
        Assert.AreEqual(rand(1).item<float>(), afterCheckpointed, "random state after the backward pass");
    }

    /// <summary>Packed (padding-free) batches carry their layout on the mask; the recomputation must see it too.</summary>
    [TestMethod]
    [DataRow("llama")]
    [DataRow("gemma2")]
    [DataRow("mixtral")]
    public void CheckpointedGradients_OfPackedBatches_EqualThePlainBackward(string arch)
    {
        using var model = Model(arch, lora: true);
        using var reference = Model(arch, lora: false, seed: 9);
        var packed = RouterAuxLossObjective<TokenizedPreference>.Wrap(new DpoObjective(model, new ReferenceLogProbs.Live(reference),
            new PreferenceLossOptions { Beta = 0.3 }, new DpoStepOptions(PaddingFree: true), 0), model, 0.02, 0.001);
        Func<ObjectiveResult> compute = () => packed.Compute(Pairs);
        var (plainLoss, plain) = Step(model, compute, checkpointing: false, seed: 17);
        long recomputed = Checkpointing.RecomputedLayers;
        var (checkpointedLoss, checkpointed) = Step(model, compute, checkpointing: true, seed: 17);
        Assert.AreEqual(model.Config.NumHiddenLayers, Checkpointing.RecomputedLayers - recomputed, "layers recomputed by the backward pass");
        Assert.AreEqual(plainLoss, checkpointedLoss, Tolerance, "loss");
        AssertSameGradients(plain, checkpointed, $"{arch} packed DPO LoRA");
    }

    [TestMethod]
    public void MoeRouterLogits_AreRecordedOncePerLayer()
    {
        using var model = Model("mixtral", lora: false);
        using var scope = NewDisposeScope();
        using var batch = SequenceBatch.Collate(Completions.Select(e => (e.Prompt, e.Completion)).ToList(), 0, model.Device, true);
        int Recorded(bool checkpointing)
        {
            using var recording = model.RecordRouterLogits()!;
            using (Checkpointing.Enable(checkpointing)) model.Forward(batch.InputIds, batch.AttentionMask).sum().backward();
            Assert.IsTrue(recording.Forwards[0].RouterLogits.All(t => t.requires_grad), "recorded router logits carry their gradient path");
            return recording.Forwards.Sum(f => f.RouterLogits.Count);
        }
        Assert.AreEqual(model.Config.NumHiddenLayers, Recorded(false));
        Assert.AreEqual(model.Config.NumHiddenLayers, Recorded(true));
    }

    [TestMethod]
    [DataRow(false, 0)]
    [DataRow(true, 0)]
    [DataRow(true, 1)]   // data parallel's micro-batch path (one rank, passes of one example)
    public void ShortTrainingRun_EndsWithTheSameWeights(bool lora, int perRankBatchSize)
    {
        Dictionary<string, double[]> Train(bool checkpointing)
        {
            using var model = Model("llama", lora);
            var options = new TrainingOptions
            {
                BatchSize = 2, Epochs = 3, LearningRate = 1e-2, WarmupSteps = 1, Seed = 4, GradientCheckpointing = checkpointing,
                PerRankBatchSize = perRankBatchSize, LoggingInterval = 100,
            };
            var trainable = model.parameters().Where(p => p.requires_grad).ToList();
            manual_seed(23);
            long recomputed = Checkpointing.RecomputedLayers;
            var summary = new TrainingLoop<TokenizedCompletion>(options, trainable, Sft(model), null, "test").Run(Completions);
            Assert.AreEqual(6, summary.Steps);
            // 3 epochs of a batch of 2 and a batch of 1 (2 passes, or 3 in passes of one example), 2 layers: every training pass was checkpointed, or none.
            Assert.AreEqual(checkpointing ? 3 * (perRankBatchSize == 1 ? 3 : 2) * 2 : 0, Checkpointing.RecomputedLayers - recomputed, "layers recomputed");
            return model.named_parameters().ToDictionary(p => p.name, p => p.parameter.data<double>().ToArray());
        }
        var plain = Train(false);
        var checkpointed = Train(true);
        foreach (var (name, expected) in plain)
        {
            double diff = expected.Zip(checkpointed[name], (a, b) => Math.Abs(a - b)).Max();
            Assert.IsTrue(diff <= Tolerance, $"{name}: max |Δweight| = {diff:G3} after 6 steps");
        }
    }

    [TestMethod]
    public void CheckpointedSteps_DoNotLeakTensors()
    {
        using var model = Model("mixtral", lora: true);
        var objective = Sft(model);
        void StepOnce()
        {
            using var scope = NewDisposeScope();
            using (Checkpointing.Enable()) objective.Compute(Completions).Loss.backward();
            foreach (var p in model.parameters()) p.grad = null;
        }
        for (int i = 0; i < 3; i++) StepOnce();   // warm up
        GC.Collect(); GC.WaitForPendingFinalizers();
        long before = Tensor.TotalCount, liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 10; i++) StepOnce();
        GC.Collect(); GC.WaitForPendingFinalizers();
        Assert.AreEqual(before, Tensor.TotalCount, "live tensors grew over 10 checkpointed steps");
        Assert.AreEqual(liveBefore, DisposeScopeManager.Statistics.ThreadTotalLiveCount, "dispose-scope live count grew");
    }

    [TestMethod]
    public void KvCache_IsRefusedWithCheckpointing_AndPassesWithoutGradientsAreNotCheckpointed()
    {
        using var model = Model("qwen3", lora: false);
        using var scope = NewDisposeScope();
        var ids = tensor(new long[] { 1, 2, 3 }, 1, 3);
        using var checkpointing = Checkpointing.Enable();
        using (var cache = model.CreateCache())
        {
            var error = Assert.Throws<InvalidOperationException>(() => model.Forward(ids, cache: cache));
            StringAssert.Contains(error.Message, "key/value cache");
        }
        using (no_grad())
        using (var cache = model.CreateCache())
            Assert.IsFalse(model.Forward(ids, cache: cache).requires_grad);   // generation: no gradients, no checkpoint
    }
}
