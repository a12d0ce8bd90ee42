using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Lora;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tests.Modeling;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;
using Microsoft.ML.Dpo.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>
/// SFT, DPO, LoRA-DPO and reward-model training of the sparse mixture-of-experts architectures on tiny instances:
/// finite losses, a gradient for every parameter, exact resume, and the load-balancing auxiliary loss added and logged.
/// </summary>
[TestClass]
public sealed class MoeTrainingTests
{
    static TempDirectory? dir;
    static TextTokenizer? tokenizer;

    [ClassInitialize]
    public static void Setup(TestContext _)
    {
        dir = new TempDirectory();
        tokenizer = TextTokenizer.CreateByteLevel(dir.Combine("tokenizer"));
    }

    [ClassCleanup]
    public static void Cleanup() => dir?.Dispose();

    static LanguageModel Base(string arch, int seed = 1)
    {
        var config = MoeModels.ByName(arch);
        config.VocabSize = tokenizer!.VocabularySize;
        config.BosTokenId = tokenizer.BosTokenId ?? tokenizer.EosTokenId!.Value;
        config.EosTokenIds = [tokenizer.EosTokenId!.Value];
        manual_seed(seed);
        return new LanguageModel(CausalLM.Create(config), tokenizer);
    }

    static Dictionary<string, float[]> Weights(LanguageModel model)
    {
        using var scope = NewDisposeScope();
        return LoraAdapters.PlainWeights(model.Network, merge: false).ToDictionary(kv => kv.Key, kv => kv.Value.data<float>().ToArray());
    }

    /// <summary>Every parameter moved from the base: AdamW changes exactly the parameters that received a non-zero gradient.</summary>
    static void AssertEveryParameterTrained(LanguageModel before, LanguageModel after)
    {
        var a = Weights(before);
        foreach (var (name, values) in Weights(after))
            CollectionAssert.AreNotEqual(a[name], values, $"'{name}' received no gradient");
    }

    static IDataView Pairs(MLContext ml) => ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects[..16]));

    static IDataView Completions(MLContext ml) => ml.Data.LoadFromEnumerable(StylePreferenceTask.MostlyCurtCompletions(StylePreferenceTask.TrainSubjects[..16]));

    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }

    /// <summary>Runs <paramref name="fit"/> straight, then interrupted at step 2 and resumed; returns the straight run's metrics and model.</summary>
    static (List<IReadOnlyDictionary<string, double>> Metrics, LanguageModelTransformer Model) FitAndCheckResume<TOptions>(
        Func<TOptions, LanguageModelTransformer> fit, Func<TOptions> options) where TOptions : LanguageModelTrainerOptions
    {
        using var straightDir = new TempDirectory();
        using var resumedDir = new TempDirectory();
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var straight = options();
        straight.CheckpointDirectory = straightDir.Path;
        straight.Progress = new SyncProgress(p => metrics.Add(p.Metrics));
        var model = fit(straight);

        using var cancel = new CancellationTokenSource();
        var first = options();
        first.CheckpointDirectory = resumedDir.Path;
        first.CancellationToken = cancel.Token;
        first.Progress = new SyncProgress(p => { if (p.Step == 2) cancel.Cancel(); });
        Assert.ThrowsExactly<OperationCanceledException>(() => fit(first));
        var second = options();
        second.CheckpointDirectory = resumedDir.Path;
        second.Resume = true;
        using var resumed = fit(second);
        Assert.AreEqual(model.TrainingSummary!.Steps, resumed.TrainingSummary!.Steps);
        var w = Weights(model.Model);
        foreach (var (name, values) in Weights(resumed.Model))
            CollectionAssert.AreEqual(w[name], values, $"resumed '{name}'");
        return (metrics, model);
    }

    static void AssertFiniteWithAuxLoss(List<IReadOnlyDictionary<string, double>> metrics, int steps)
    {
        Assert.AreEqual(steps, metrics.Count);
        foreach (var m in metrics)
        {
            Assert.IsTrue(double.IsFinite(m["loss"]), "loss " + m["loss"]);
            Assert.IsTrue(m.TryGetValue("aux_loss", out double aux) && double.IsFinite(aux) && aux > 0, "aux_loss is logged: " + string.Join(", ", m.Keys));
        }
    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void SftTrainsEveryParameterLogsTheAuxLossAndResumesExactly(string arch)
    {
        using var baseModel = Base(arch);
        var (metrics, model) = FitAndCheckResume<SftTrainer.Options>(
            o => new MLContext().Alignment().Trainers.Sft(o).Fit(Completions(new MLContext())),
            () => new SftTrainer.Options { BaseModel = baseModel, MaxSteps = 3, BatchSize = 4, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1 });
        using (model)
        {
            AssertFiniteWithAuxLoss(metrics, 3);
            AssertEveryParameterTrained(baseModel, model.Model);
        }
    }

    [TestMethod]
    [DataRow("mixtral")]
    [DataRow("qwen3_moe")]
    public void DpoTrainsEveryParameterLogsTheAuxLossAndResumesExactly(string arch)
    {
        using var baseModel = Base(arch);
        var (metrics, model) = FitAndCheckResume<DpoTrainer.Options>(
            o => new MLContext().Alignment().Trainers.Dpo(o).Fit(Pairs(new MLContext())),
            () => new DpoTrainer.Options { BaseModel = baseModel, MaxSteps = 3, BatchSize = 4, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1 });
        using (model)
        {
            AssertFiniteWithAuxLoss(metrics, 3);
            AssertEveryParameterTrained(baseModel, model.Model);
        }
    }

    [TestMethod]
    public void LoraDpoOnTheExpertsTrainsOnlyTheAdaptersAndKeepsTheRouterFrozen()
    {
        using var baseModel = Base("mixtral");
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var ml = new MLContext();
        using var model = ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
        {
            BaseModel = baseModel, MaxSteps = 3, BatchSize = 4, LearningRate = 1e-2, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1,
            Lora = new LoraOptions { Rank = 4, TargetModules = ["q", "v", "w1", "w2", "w3"] },
            Progress = new SyncProgress(p => metrics.Add(p.Metrics)),
        }).Fit(Pairs(ml));
        AssertFiniteWithAuxLoss(metrics, 3);
        var before = Weights(baseModel);
        foreach (var (name, values) in Weights(model.Model))
            CollectionAssert.AreEqual(before[name], values, $"base weight '{name}' changed under LoRA");
        var lora = model.Model.Lora!;
        Assert.IsTrue(lora.ModuleNames.Count(n => n.Contains(".experts.")) == 2 * 4 * 3, "every expert projection of both layers is adapted");
        Assert.IsFalse(lora.ModuleNames.Any(n => n.EndsWith(".gate", StringComparison.Ordinal)));
        Assert.IsTrue(lora.Modules.Values.All(m => m.B.abs().max().item<float>() > 0), "every adapter was trained");
        Assert.IsTrue(metrics[0]["rewards/margins"] == 0 || Math.Abs(metrics[0]["rewards/margins"]) < 1e-6, "LoRA starts at the reference (B = 0)");
    }

    [TestMethod]
    public void RewardModelTrainsAnMoeWithTheAuxLoss()
    {
        using var baseModel = Base("qwen3_moe");
        var metrics = new List<IReadOnlyDictionary<string, double>>();
        var ml = new MLContext();
        using var model = ml.Alignment().Trainers.RewardModel(new RewardModelTrainer.Options
        {
            BaseModel = baseModel, MaxSteps = 2, BatchSize = 4, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1,
            Progress = new SyncProgress(p => metrics.Add(p.Metrics)),
        }).Fit(Pairs(ml));
        AssertFiniteWithAuxLoss(metrics, 2);
    }

    /// <summary>The objective's loss grows by exactly coef × aux_loss, for SFT and DPO alike, and coefficient 0 leaves it alone.</summary>
    [TestMethod]
    public void TheAuxLossIsAddedTimesItsCoefficient()
    {
        using var model = Base("mixtral");
        var report = new DataPreparationReport();
        var pairs = StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects[..4]).Select((p, i) => new PreferencePair(p.prompt, p.chosen, p.rejected, i)).ToList();
        var examples = FineTuningRun.TokenizePairs(model, pairs, 64, 40, TruncationMode.KeepEnd, report);
        var completions = examples.Select(e => new TokenizedCompletion(e.Prompt, e.Chosen, e.Row, e.Index)).ToList();
        var network = model.Network;
        network.train();
        using var scope = NewDisposeScope();
        var sft = new SftObjective(network, model.PadTokenId, completionOnlyLoss: true);
        var dpo = new DpoObjective(network, new ReferenceLogProbs.Live(network), new PreferenceLossOptions { Beta = 0.1 }, new DpoStepOptions(), model.PadTokenId);
        foreach (var (name, plain, withAux, off) in new[]
        {
            ("sft", Run(sft, completions), Run(RouterAuxLossObjective<TokenizedCompletion>.Wrap(sft, network, 0.5, 0), completions),
                Run(RouterAuxLossObjective<TokenizedCompletion>.Wrap(sft, network, 0.0, 0), completions)),
            ("dpo", Run(dpo, examples), Run(RouterAuxLossObjective<TokenizedPreference>.Wrap(dpo, network, 0.5, 0), examples),
                Run(RouterAuxLossObjective<TokenizedPreference>.Wrap(dpo, network, 0.0, 0), examples)),
        })
        {
            double aux = withAux.Metrics["aux_loss"];
            Assert.IsTrue(aux > 0.5 && aux < 4, $"{name}: aux_loss {aux} (2 for a balanced top-2 router)");
            Assert.AreEqual(plain.Loss + 0.5 * aux, withAux.Loss, 1e-5, $"{name}: loss + 0.5 · aux_loss");
            Assert.AreEqual(withAux.Loss, withAux.Metrics["loss"], 1e-6, $"{name}: the logged loss is the optimised total");
            Assert.AreEqual(plain.Loss, off.Loss, 1e-6, $"{name}: coefficient 0");
            Assert.AreEqual(aux, off.Metrics["aux_loss"], 1e-6, $"{name}: aux_loss is logged even when not weighted");
        }
        // A DPO step through the wrapper records exactly one forward (the policy's); the live reference pass is not counted.
        using var recording = network.RecordRouterLogits()!;
        dpo.Compute(examples);
        Assert.AreEqual(1, recording.Forwards.Count);

        // The default coefficient is the config's router_aux_loss_coef.
        Assert.AreEqual(0.001, network.Config.RouterAuxLossCoef);
    }

    static (double Loss, IReadOnlyDictionary<string, double> Metrics) Run<T>(ITrainingObjective<T> objective, IReadOnlyList<T> batch)
    {
        using var scope = NewDisposeScope();
        var result = objective.Compute(batch);
        return (result.Loss.ToDouble(), result.Metrics);
    }

    /// <summary>transformers' load_balancing_loss_func written out with loops: with a mask, padded tokens count nowhere.</summary>
    [TestMethod]
    public void LoadBalancingLossEqualsItsDefinition()
    {
        manual_seed(3);
        int layers = 2, batch = 2, length = 3, experts = 4, k = 2;
        var logits = Enumerable.Range(0, layers).Select(_ => randn(batch * length, experts) * 2).ToArray();
        long[] maskValues = [1, 1, 1, 0, 1, 1];
        var mask = tensor(maskValues, batch, length);
        double Expected(bool masked)
        {
            var f = new double[k, experts];
            var p = new double[experts];
            double count = 0;
            foreach (var l in logits)
            {
                var probabilities = l.softmax(-1);
                for (int n = 0; n < batch * length; n++)
                {
                    if (masked && maskValues[n] == 0) continue;
                    count++;
                    var row = Enumerable.Range(0, experts).Select(e => probabilities[n, e].item<float>()).ToArray();
                    var top = Enumerable.Range(0, experts).OrderByDescending(e => row[e]).Take(k).ToArray();
                    for (int j = 0; j < k; j++) f[j, top[j]]++;
                    for (int e = 0; e < experts; e++) p[e] += row[e];
                }
            }
            double loss = 0;
            for (int j = 0; j < k; j++)
                for (int e = 0; e < experts; e++) loss += f[j, e] / count * (p[e] / count);
            return loss * experts;
        }
        Assert.AreEqual(Expected(false), RouterLoss.LoadBalancing(logits, experts, k, null).ToDouble(), 1e-5);
        Assert.AreEqual(Expected(true), RouterLoss.LoadBalancing(logits, experts, k, mask).ToDouble(), 1e-5);
        Assert.AreNotEqual(Expected(false), Expected(true), 1e-4);
        var z = RouterLoss.ZLoss(logits, mask).ToDouble();
        double zExpected = logits.SelectMany(l => Enumerable.Range(0, batch * length).Where(n => maskValues[n] == 1)
            .Select(n => Math.Pow(l[n].logsumexp(0).item<float>(), 2))).Average();
        Assert.AreEqual(zExpected, z, 1e-4);
    }
}
