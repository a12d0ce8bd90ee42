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
/// Issue 18, padding-free packing: a packed batch (all sequences in one row, positions restarting per sequence, attention
/// per sequence) gives the padded batch's per-sequence log-prob sums, losses and gradients of every parameter, in float64,
/// on every architecture family (learned positions, sliding windows shorter than the sequences, soft-capping, longrope on its
/// long factors, MoE with its load-balancing loss, LoRA); token-budget batching covers each example once per epoch, is
/// seeded and resumes exactly.
/// </summary>
[TestClass]
public sealed class PaddingFreeTests
{
    static CausalLMConfig Config(string name) => name switch
    {
        // Mistral: Llama with a window (3) shorter than most sequences.
        "mistral" => With(TinyModels.Llama(tied: false, modelType: "mistral"), c => c.SlidingWindow = 3),
        // Phi-3 with longrope whose original context (8) the longest sequence exceeds: the batch runs on the long factors.
        "phi3-long" => TinyModels.Phi3(originalContext: 8),
        // Llama 3.1 rope scaling.
        "llama3" => With(TinyModels.Llama(tied: true), c => c.RopeScaling = new RopeScaling
            { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8 }),
        "mixtral" or "qwen3_moe" => MoeModels.ByName(name),
        _ => TinyModels.ByName(name),
    };

    static CausalLMConfig With(CausalLMConfig c, Action<CausalLMConfig> change) { change(c); return c; }

    static CausalLM Model(string name, int seed = 5)
    {
        manual_seed(seed);
        return CausalLM.Create(Config(name), ScalarType.Float64);
    }

    // Length-skewed pairs and completions: prompts of 1–6 tokens, answers of 1–9 (longer than the windows of 3).
    static List<TokenizedPreference> Pairs(int count, int seed)
    {
        var random = new Random(seed);
        int[] Ids(int min, int max) => Enumerable.Range(0, random.Next(min, max + 1)).Select(_ => random.Next(4, 90)).ToArray();
        return Enumerable.Range(0, count).Select(i => new TokenizedPreference(Ids(1, 6), Ids(1, 9), Ids(1, 9), i, i)).ToList();
    }

    static List<TokenizedCompletion> Completions(int count, int seed) =>
        Pairs(count, seed).Select(p => new TokenizedCompletion(p.Prompt, p.Chosen, p.Row, p.Index)).ToList();

    /// <summary>The loss, metrics and every parameter's gradient of one Compute + backward, as doubles.</summary>
    static (double Loss, IReadOnlyDictionary<string, double> Metrics, Dictionary<string, double[]> Gradients) Run<T>(CausalLM model, ITrainingObjective<T> objective, IReadOnlyList<T> batch)
    {
        using var scope = NewDisposeScope();
        foreach (var p in model.parameters()) p.grad = null;
        var result = objective.Compute(batch);
        result.Loss.backward();
        var gradients = model.named_parameters().Where(p => p.parameter.grad is not null)
            .ToDictionary(p => p.name, p => p.parameter.grad!.data<double>().ToArray());
        foreach (var p in model.parameters()) p.grad = null;
        return (result.Loss.item<double>(), result.Metrics, gradients);
    }

    static void AssertSame<T>(CausalLM model, ITrainingObjective<T> padded, ITrainingObjective<T> packed, IReadOnlyList<T> batch, string what)
    {
        var a = Run(model, padded, batch);
        var b = Run(model, packed, batch);
        Assert.AreEqual(a.Loss, b.Loss, 1e-12 * Math.Max(1, Math.Abs(a.Loss)), $"{what}: loss");
        foreach (var (name, value) in a.Metrics)
            Assert.AreEqual(value, b.Metrics[name], 1e-10 * Math.Max(1, Math.Abs(value)), $"{what}: metric {name}");
        CollectionAssert.AreEquivalent(a.Gradients.Keys.ToList(), b.Gradients.Keys.ToList(), $"{what}: parameters with gradients");
        Assert.IsGreaterThan(0, a.Gradients.Count);
        foreach (var (name, expected) in a.Gradients)
        {
            var got = b.Gradients[name];
            double scale = Math.Max(1e-3, expected.Max(Math.Abs));
            for (int i = 0; i < expected.Length; i++)
                Assert.AreEqual(expected[i], got[i], 1e-10 * scale, $"{what}: d loss / d {name}[{i}]");
        }
    }

    [TestMethod]
    [DataRow("llama-tied")]
    [DataRow("llama3")]
    [DataRow("gpt2")]
    [DataRow("mistral")]
    [DataRow("qwen3")]
    [DataRow("gemma")]
    [DataRow("gemma2")]
    [DataRow("gemma3_text")]
    [DataRow("phi3-long")]
    [DataRow("olmo2")]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void PackedSftAndDpoEqualPadded(string name)
    {
        using var model = Model(name);
        using var reference = Model(name, seed: 6);
        var pairs = Pairs(5, seed: 1);
        var completions = Completions(6, seed: 2);
        double? aux = model.Config.IsMixtureOfExperts ? 0.05 : null;
        ITrainingObjective<T> Wrap<T>(ITrainingObjective<T> o) => aux is double coefficient ? RouterAuxLossObjective<T>.Wrap(o, model, coefficient, 0.01) : o;

        // Per-sequence scores: sums, counts, LD-DPO's shared part, WPO's weight and the statistics.
        using (var scope = NewDisposeScope())
        {
            var rows = SequenceScoring.PairRows(pairs);
            if (name == "phi3-long") Assert.IsGreaterThan(8, rows.Max(r => r.Prompt.Length + r.Completion.Length), "the batch runs on the long factors");
            using var padded = SequenceBatch.Collate(rows, 0, model.Device);
            using var packed = SequenceBatch.Pack(rows, 0, model.Device);
            Assert.AreEqual(1, packed.Rows);
            Assert.AreEqual(padded.Rows, packed.Sequences);
            Assert.AreEqual(padded.Tokens, packed.InputIds.shape[1], "no padding in the packed row");
            var request = new ScoringRequest(SharedPrefix: true, WpoWeights: true, Statistics: true);
            var a = SequenceScoring.Score(model, padded, request);
            var b = SequenceScoring.Score(model, packed, request);
            foreach (var (x, y, what) in new[] { (a.Sum, b.Sum, "sum"), (a.Count, b.Count, "count"), (a.SharedSum!, b.SharedSum!, "shared"),
                (a.WpoLogWeight!, b.WpoLogWeight!, "wpo"), (a.EntropySum!, b.EntropySum!, "entropy"), (a.LogitMeanSum!, b.LogitMeanSum!, "logit mean"),
                (a.CorrectCount!, b.CorrectCount!, "correct"), (a.TokenLogProbs!, b.TokenLogProbs!, "token log-probs") })
            {
                var expected = x.detach().data<double>().ToArray();
                var got = y.detach().data<double>().ToArray();
                Assert.HasCount(expected.Length, got, what);
                for (int i = 0; i < expected.Length; i++) Assert.AreEqual(expected[i], got[i], 1e-10 * Math.Max(1, Math.Abs(expected[i])), $"{name} {what}[{i}]");
            }
        }

        AssertSame(model, Wrap(new SftObjective(model, 0, completionOnlyLoss: true)), Wrap(new SftObjective(model, 0, completionOnlyLoss: true, paddingFree: true)),
            completions, $"{name} SFT");
        AssertSame(model, Wrap(new SftObjective(model, 0, completionOnlyLoss: false)), Wrap(new SftObjective(model, 0, completionOnlyLoss: false, paddingFree: true)),
            completions, $"{name} SFT, all tokens");
        var loss = new PreferenceLossOptions { Beta = 0.3 };
        var step = new DpoStepOptions(LdAlpha: 0.5);
        AssertSame(model, Wrap(new DpoObjective(model, new ReferenceLogProbs.Live(reference), loss, step, 0)),
            Wrap(new DpoObjective(model, new ReferenceLogProbs.Live(reference), loss, step with { PaddingFree = true }, 0)), pairs, $"{name} DPO");
    }

    [TestMethod]
    [DataRow("llama-tied")]
    [DataRow("gemma2")]
    public void PackedOrpoAndKtoEqualPadded(string name)
    {
        using var model = Model(name);
        using var reference = Model(name, seed: 6);
        var pairs = Pairs(4, seed: 7);
        AssertSame(model, new OrpoObjective(model, 0.2, 0), new OrpoObjective(model, 0.2, 0, paddingFree: true), pairs, $"{name} ORPO");
        var unpaired = pairs.Select((p, i) => new TokenizedUnpaired(p.Prompt, i % 2 == 0 ? p.Chosen : p.Rejected, i % 2 == 0, i, i)).ToList();
        var step = new KtoStepOptions(0.1, 1.0, 1.0, 32);
        AssertSame(model, new KtoObjective(model, reference, null, step, 0), new KtoObjective(model, reference, null, step with { PaddingFree = true }, 0), unpaired, $"{name} KTO");
    }

    [TestMethod]
    public void PackedLoraDpoEqualsPadded()
    {
        using var model = Model("llama-untied");
        var adapters = LoraAdapters.Apply(model, new LoraOptions { Rank = 2, TargetModules = ["q_proj", "v_proj", "down_proj"] });
        // Adapters start at B = 0; move them so the policy differs from its reference (the adapters off).
        using (no_grad()) foreach (var p in adapters.Parameters) p.copy_(randn_like(p) * 0.1);
        var pairs = Pairs(4, seed: 3);
        var loss = new PreferenceLossOptions { Beta = 0.2 };
        ReferenceLogProbs Reference() => new ReferenceLogProbs.Live(model, adapters.Disable);
        AssertSame(model, new DpoObjective(model, Reference(), loss, new DpoStepOptions(), 0),
            new DpoObjective(model, Reference(), loss, new DpoStepOptions(PaddingFree: true), 0), pairs, "LoRA DPO");
    }

    [TestMethod]
    public void SegmentIdsInAPlainMaskGiveEachSequenceAlone()
    {
        // Without the layout (a mask of segment ids built by hand), the dense block-diagonal mask gives the same hidden
        // states as each sequence run on its own; padding after the segments is allowed.
        using var scope = NewDisposeScope();
        foreach (string name in new[] { "mistral", "gpt2", "gemma2" })
        {
            using var model = Model(name);
            int[][] sequences = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17]];
            long t = sequences.Sum(s => s.Length) + 2;
            var ids = new long[t];
            var segments = new long[t];
            int o = 0;
            for (int i = 0; i < sequences.Length; i++)
                foreach (int id in sequences[i]) { ids[o] = id; segments[o++] = i + 1; }
            var hidden = model.HiddenStates(tensor(ids, 1, t), tensor(segments, 1, t));
            o = 0;
            foreach (var sequence in sequences)
            {
                var alone = model.HiddenStates(tensor(sequence.Select(x => (long)x).ToArray(), 1, sequence.Length));
                var part = hidden.narrow(1, o, sequence.Length);
                Assert.IsTrue(part.allclose(alone, rtol: 1e-10, atol: 1e-12), $"{name}: sequence at {o}");
                o += sequence.Length;
            }
        }
    }

    [TestMethod]
    public void PackedStepLeavesNoTensorsBehind()
    {
        using var model = Model("gemma2");
        using var reference = Model("gemma2", seed: 6);
        var objective = new DpoObjective(model, new ReferenceLogProbs.Live(reference), new PreferenceLossOptions(), new DpoStepOptions(PaddingFree: true), 0);
        var pairs = Pairs(3, seed: 4);
        void Step() { using var scope = NewDisposeScope(); objective.Compute(pairs).Loss.backward(); foreach (var p in model.parameters()) p.grad = null; }
        Step();
        long before = Tensor.TotalCount;
        Step();
        Assert.AreEqual(before, Tensor.TotalCount, "live tensors after a packed step");
    }

    [TestMethod]
    public void PackingIsRefusedWithACache()
    {
        using var scope = NewDisposeScope();
        using var model = Model("llama-tied");
        using var batch = SequenceBatch.Pack([([5, 6], [7]), ([8], [9, 10])], 0, model.Device);
        using var cache = model.CreateCache();
        model.HiddenStates(tensor(new long[] { 5, 6 }, 1, 2), null, cache);          // two cached positions
        var e = Assert.ThrowsExactly<ArgumentException>(() => model.HiddenStates(batch.InputIds, batch.AttentionMask, cache));
        StringAssert.Contains(e.Message, "packed");
    }

    // ---- token-budget batching ----

    [TestMethod]
    public void TokenBudgetBatchesCoverEveryExampleOnceWithinTheBudget()
    {
        var random = new Random(9);
        int[] lengths = Enumerable.Range(0, 200).Select(_ => random.Next(1, 60)).ToArray();
        lengths[17] = 150;                                   // longer than the budget: a batch of its own
        var order = TrainingLoop<int>.ShuffledOrder(lengths.Length, seed: 4, epoch: 0);
        long Padded(IReadOnlyList<int> batch) => batch.Count * batch.Max(i => lengths[i]);
        var batches = TrainingLoop<int>.TokenBudgetBatches(order, 100, Padded);
        CollectionAssert.AreEqual(order, batches.SelectMany(b => b).ToArray(), "every example once, in the shuffled order");
        foreach (var batch in batches)
            Assert.IsTrue(Padded(batch) <= 100 || batch.Length == 1, $"a batch of {Padded(batch)} tokens");
        Assert.IsTrue(batches.Any(b => b.SequenceEqual([17])));
        for (int i = 0; i + 1 < batches.Count; i++)
            Assert.IsGreaterThan(100, Padded([.. batches[i], batches[i + 1][0]]), "a batch closes only when the next example would not fit");
        CollectionAssert.AreEqual(batches.SelectMany(b => b).ToArray(), TrainingLoop<int>.TokenBudgetBatches(order, 100, Padded).SelectMany(b => b).ToArray(), "deterministic");
    }

    /// <summary>A toy objective over (x, y, length) that records the examples of every micro-batch and budgets by length.</summary>
    sealed class SizedObjective(Linear model) : ITrainingObjective<(float X, float Y, int Length)>
    {
        public List<int[]> Seen { get; } = [];
        public ObjectiveResult Compute(IReadOnlyList<(float X, float Y, int Length)> batch)
        {
            Seen.Add(batch.Select(e => (int)Math.Round((e.X + 1) * 20)).ToArray());
            var x = tensor(batch.Select(e => e.X).ToArray()).unsqueeze(1);
            var y = tensor(batch.Select(e => e.Y).ToArray()).unsqueeze(1);
            var loss = nn.functional.mse_loss(model.forward(x), y);
            return new ObjectiveResult(loss, new Dictionary<string, double> { ["loss"] = loss.item<float>() }, batch.Sum(e => e.Length));
        }
        public bool SupportsPaddingFree => true;
        public long? BatchTokens(IReadOnlyList<(float X, float Y, int Length)> batch) => batch.Sum(e => (long)e.Length);
    }

    static readonly (float X, float Y, int Length)[] Sized = Enumerable.Range(0, 40)
        .Select(i => (i / 20f - 1f, 3 * (i / 20f - 1f) - 1, 5 + (i * 37 % 23))).ToArray();

    static TrainingOptions BudgetOptions(string dir) => new()
    {
        Epochs = 3, BatchSize = 4, GradientAccumulationSteps = 2, LearningRate = 0.05, LoggingInterval = 1, CheckpointDirectory = dir,
        Seed = 11, MaxTokensPerBatch = 60, PaddingFree = true,
    };

    static Linear NewLinear() { manual_seed(7); return nn.Linear(1, 1); }

    static TrainingCheckpoint Checkpoint(string dir, Linear model) =>
        new(dir, d => model.save(Path.Combine(d, "weights.bin")), d => model.load(Path.Combine(d, "weights.bin")));

    [TestMethod]
    public void TokenBudgetTrainingSeesEveryExampleOncePerEpochAndResumesExactly()
    {
        using var dirA = new TempDirectory();
        using var dirB = new TempDirectory();
        using var uninterrupted = NewLinear();
        var all = new SizedObjective(uninterrupted);
        var summary = new TrainingLoop<(float, float, int)>(BudgetOptions(dirA.Path), uninterrupted.parameters().ToList(), all, Checkpoint(dirA.Path, uninterrupted), "toy").Run(Sized);
        // Each epoch's micro-batches partition the data, within the budget; epochs are shuffled differently (seeded).
        var epochs = new List<List<int[]>>();
        int seen = 0;
        while (seen < all.Seen.Count)
        {
            var epoch = new List<int[]>();
            while (epoch.Sum(b => b.Length) < Sized.Length) epoch.Add(all.Seen[seen++]);
            epochs.Add(epoch);
        }
        Assert.HasCount(3, epochs);
        foreach (var epoch in epochs)
        {
            CollectionAssert.AreEquivalent(Enumerable.Range(0, Sized.Length).ToArray(), epoch.SelectMany(b => b).ToArray(), "each example once per epoch");
            foreach (var batch in epoch) Assert.IsTrue(batch.Length == 1 || batch.Sum(i => Sized[i].Length) <= 60);
        }
        CollectionAssert.AreNotEqual(epochs[0].SelectMany(b => b).ToArray(), epochs[1].SelectMany(b => b).ToArray());
        Assert.AreEqual(epochs.Sum(e => (e.Count + 1) / 2), summary.Steps, "steps: ⌈micro-batches ÷ accumulation⌉ per epoch");

        // The same seed gives the same batches; a run cancelled after step 4 and resumed ends with the same weights.
        using (var first = NewLinear())
        {
            using var cancel = new CancellationTokenSource();
            var options = BudgetOptions(dirB.Path);
            options.CancellationToken = cancel.Token;
            options.Progress = new SyncProgress(p => { if (p.Step == 4) cancel.Cancel(); });
            var partial = new SizedObjective(first);
            Assert.ThrowsExactly<OperationCanceledException>(() =>
                new TrainingLoop<(float, float, int)>(options, first.parameters().ToList(), partial, Checkpoint(dirB.Path, first), "toy").Run(Sized));
            CollectionAssert.AreEqual(all.Seen.Take(partial.Seen.Count).SelectMany(b => b).ToArray(), partial.Seen.SelectMany(b => b).ToArray());
        }
        using var resumed = NewLinear();
        var resumeOptions = BudgetOptions(dirB.Path);
        resumeOptions.Resume = true;
        var rest = new SizedObjective(resumed);
        var resumedSummary = new TrainingLoop<(float, float, int)>(resumeOptions, resumed.parameters().ToList(), rest, Checkpoint(dirB.Path, resumed), "toy").Run(Sized);
        Assert.AreEqual(summary.Steps, resumedSummary.Steps);
        CollectionAssert.AreEqual(all.Seen.Skip(all.Seen.Count - rest.Seen.Count).SelectMany(b => b).ToArray(), rest.Seen.SelectMany(b => b).ToArray(), "the resumed run continues with the same micro-batches");
        CollectionAssert.AreEqual(Weights(uninterrupted), Weights(resumed));
    }

    static float[] Weights(Linear m) => m.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();

    [TestMethod]
    public void TrainersWithoutPackingRefuseTheOptions()
    {
        using var model = NewLinear();
        var objective = new PlainObjective(model);
        var packed = new TrainingOptions { LearningRate = 0.1, PaddingFree = true };
        var e = Assert.ThrowsExactly<NotSupportedException>(() => new TrainingLoop<(float, float, int)>(packed, model.parameters().ToList(), objective, null, "toy").Run(Sized));
        StringAssert.Contains(e.Message, "PaddingFree");
        var budget = new TrainingOptions { LearningRate = 0.1, MaxTokensPerBatch = 10 };
        e = Assert.ThrowsExactly<NotSupportedException>(() => new TrainingLoop<(float, float, int)>(budget, model.parameters().ToList(), objective, null, "toy").Run(Sized));
        StringAssert.Contains(e.Message, "MaxTokensPerBatch");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new TrainingOptions { MaxTokensPerBatch = -1 }.Validate());
    }

    sealed class PlainObjective(Linear model) : ITrainingObjective<(float X, float Y, int Length)>
    {
        public ObjectiveResult Compute(IReadOnlyList<(float X, float Y, int Length)> batch)
        {
            var loss = model.forward(tensor(batch.Select(e => e.X).ToArray()).unsqueeze(1)).sum();
            return new ObjectiveResult(loss, new Dictionary<string, double>(), batch.Count);
        }
    }

    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
