using Microsoft.ML.Data;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Dpo.Trainers;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Trainers;

[TestClass]
public sealed class DpoTrainerTests
{
    static TempDirectory? dir;
    static LanguageModel? baseModel;

    [ClassInitialize]
    public static void CreateBase(TestContext _)
    {
        dir = new TempDirectory();
        baseModel = StylePreferenceTask.CreateBaseModel(dir.Combine("base"));
        baseModel.Save(dir.Combine("base-hf"));
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        baseModel?.Dispose();
        dir?.Dispose();
    }

    static IDataView Pairs(MLContext ml) => ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects));

    static DpoTrainer.Options Options(Action<DpoTrainer.Options>? configure = null)
    {
        var options = new DpoTrainer.Options { BaseModel = baseModel, Epochs = 2, BatchSize = 4, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1 };
        configure?.Invoke(options);
        return options;
    }

    static List<double> Losses(DpoTrainer.Options options, out LanguageModelTransformer model)
    {
        var losses = new List<double>();
        options.Progress = new SyncProgress(p => losses.Add(p.Metrics["loss"]));
        model = new MLContext().Alignment().Trainers.Dpo(options).Fit(Pairs(new MLContext()));
        return losses;
    }

    static float[] Weights(LanguageModel model) => model.Network.parameters().SelectMany(p => p.data<float>().ToArray()).ToArray();

    [TestMethod]
    public void PrecomputedReferenceGivesTheSameLossesAsTheLiveOne()
    {
        using var precomputeDir = new TempDirectory();
        var live = Losses(Options(), out var liveModel);
        var precomputed = Losses(Options(o => { o.PrecomputeReferenceLogProbs = true; o.CheckpointDirectory = precomputeDir.Path; }), out var precomputedModel);
        using (liveModel) using (precomputedModel)
        {
            Assert.AreEqual(live.Count, precomputed.Count);
            for (int i = 0; i < live.Count; i++) Assert.AreEqual(live[i], precomputed[i], 1e-5, $"step {i + 1}");
            Assert.AreEqual(1, Directory.GetFiles(precomputeDir.Path, "reference_logps.*.bin").Length, "the reference log-probs are cached");
        }

        // A repeated run reads the cache (same result) instead of recomputing.
        var lines = new List<string>();
        var again = Losses(Options(o => { o.PrecomputeReferenceLogProbs = true; o.CheckpointDirectory = precomputeDir.Path; o.Log = lines.Add; }), out var againModel);
        againModel.Dispose();
        CollectionAssert.AreEqual(precomputed, again);
        Assert.IsTrue(lines.Any(l => l.Contains("read from")), string.Join("\n", lines));
    }

    [TestMethod]
    public void InterruptedAndResumedRunEndsWithTheSameWeights()
    {
        using var straightDir = new TempDirectory();
        using var resumedDir = new TempDirectory();
        Losses(Options(o => o.CheckpointDirectory = straightDir.Path), out var straight);
        using (straight)
        {
            using var cancel = new CancellationTokenSource();
            var first = Options(o => { o.CheckpointDirectory = resumedDir.Path; o.CancellationToken = cancel.Token; });
            first.Progress = new SyncProgress(p => { if (p.Step == 5) cancel.Cancel(); });
            Assert.ThrowsExactly<OperationCanceledException>(() => new MLContext().Alignment().Trainers.Dpo(first).Fit(Pairs(new MLContext())));
            StringAssert.Contains(File.ReadAllText(Path.Combine(resumedDir.Path, "checkpoint", "trainer_state.json")), "\"Step\":5");

            Losses(Options(o => { o.CheckpointDirectory = resumedDir.Path; o.Resume = true; }), out var resumed);
            using (resumed)
            {
                Assert.AreEqual(straight.TrainingSummary!.Steps, resumed.TrainingSummary!.Steps);
                CollectionAssert.AreEqual(Weights(straight.Model), Weights(resumed.Model));
            }
        }
    }

    [TestMethod]
    public void BaseModelIsNotModifiedAndCanBeLoadedFromPath()
    {
        float[] before = Weights(baseModel!);
        Losses(Options(o => { o.BaseModel = null; o.BaseModelPath = dir!.Combine("base-hf"); o.MaxSteps = 2; }), out var fromPath);
        Losses(Options(o => o.MaxSteps = 2), out var fromMemory);
        using (fromPath) using (fromMemory)
        {
            CollectionAssert.AreEqual(before, Weights(baseModel!), "Fit trains a copy");
            CollectionAssert.AreEqual(Weights(fromMemory.Model), Weights(fromPath.Model), "a saved base model trains exactly like the in-memory one");
            Assert.IsTrue(fromPath.HasReference, "the reference is reloaded from the base model path on demand");
        }
    }

    [TestMethod]
    public void StepMetricsReachMlNetsLog()
    {
        var ml = new MLContext();
        var messages = new List<string>();
        ml.Log += (_, e) => { lock (messages) messages.Add(e.Message); };
        using var model = ml.Alignment().Trainers.Dpo(Options(o => o.MaxSteps = 2)).Fit(Pairs(ml));
        lock (messages)
            Assert.IsTrue(messages.Any(m => m.Contains("step 2/2") && m.Contains("rewards/accuracies")), string.Join("\n", messages.TakeLast(5)));
    }

    [TestMethod]
    public void MissingColumnFailsBeforeTrainingAndNamesIt()
    {
        var options = Options(o => o.ChosenColumnName = "preferred");
        var e = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new MLContext().Alignment().Trainers.Dpo(options).Fit(Pairs(new MLContext())));
        StringAssert.Contains(e.Message, "'preferred'");
        StringAssert.Contains(e.Message, "'chosen'");
    }

    [TestMethod]
    public void IdenticalPairsAndTruncationAreCounted()
    {
        var ml = new MLContext();
        var rows = StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects[..8]).ToList();
        rows.Add(new StylePreferenceTask.Pair { prompt = "Same?\n", chosen = "Yes.", rejected = "Yes." });
        rows.Add(new StylePreferenceTask.Pair { prompt = new string('x', 100) + "\n", chosen = "Happy to help!", rejected = "No." });
        using var model = ml.Alignment().Trainers.Dpo(Options(o => o.MaxSteps = 1)).Fit(ml.Data.LoadFromEnumerable(rows));
        Assert.AreEqual(1L, model.DataReport!.IdenticalPairsSkipped);
        Assert.AreEqual(1L, model.DataReport.Truncated);
        Assert.AreEqual(9L, model.DataReport.Kept);
    }

    [TestMethod]
    public void DpoStepGradientsMatchFiniteDifferences()
    {
        // Double precision so that central differences are accurate.
        manual_seed(3);
        using var network = CausalLM.Create(new CausalLMConfig
        {
            ModelType = "llama", VocabSize = 11, HiddenSize = 8, IntermediateSize = 12, NumHiddenLayers = 1, NumAttentionHeads = 2,
            NumKeyValueHeads = 1, HeadDim = 4, MaxPositionEmbeddings = 16, RmsNormEps = 1e-5, TieWordEmbeddings = false, EosTokenIds = [2],
        }, ScalarType.Float64);
        manual_seed(4);
        using var referenceNetwork = CausalLM.Create(network.Config, ScalarType.Float64);
        var examples = new List<TokenizedPreference>
        {
            new([1, 5, 6], [7, 8, 2], [9, 2], 0, 0),
            new([1, 4], [3, 3, 2], [10, 6, 5, 2], 1, 1),
        };
        var objective = new DpoObjective(network, new ReferenceLogProbs.Live(referenceNetwork),
            new PreferenceLossOptions { Beta = 0.5, LabelSmoothing = 0.1 }, new DpoStepOptions(), padId: 0);
        double Loss() { using var s = NewDisposeScope(); using var _ = no_grad(); return objective.Compute(examples).Loss.item<double>(); }

        using (var s = NewDisposeScope()) objective.Compute(examples).Loss.backward();
        var rng = new Random(5);
        int checkedEntries = 0;
        foreach (var (name, parameter) in network.named_parameters())
        {
            var flat = parameter.detach().view(-1);
            var grad = parameter.grad!.view(-1);
            for (int k = 0; k < 2; k++)
            {
                long index = rng.NextInt64(flat.shape[0]);
                double original = flat[index].item<double>(), h = 1e-6;
                using (no_grad()) flat[index] = original + h;
                double up = Loss();
                using (no_grad()) flat[index] = original - h;
                double down = Loss();
                using (no_grad()) flat[index] = original;
                double numeric = (up - down) / (2 * h), analytic = grad[index].item<double>();
                Assert.AreEqual(numeric, analytic, 1e-6 + 1e-4 * Math.Abs(numeric), $"{name}[{index}]");
                checkedEntries++;
            }
        }
        Assert.IsTrue(checkedEntries >= 10);
    }

    [TestMethod]
    public void SavedPipelineLoadsWithIdenticalOutputs()
    {
        var ml = new MLContext();
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects[..3]));
        Losses(Options(o => o.MaxSteps = 3), out var fitted);
        using (fitted)
        {
            var scored = fitted.WithOutputColumns(
                new(LanguageModelOutputKind.Response, "response", "prompt"),
                new(LanguageModelOutputKind.LogProbability, "logp", "prompt", "chosen"),
                new(LanguageModelOutputKind.ImplicitReward, "reward", "prompt", "chosen"))
                .WithGenerationOptions(new Microsoft.ML.Dpo.Generation.GenerationOptions { MaxNewTokens = 12 });
            var pipeline = ml.Transforms.CopyColumns("question", "prompt").Fit(data).Append(scored);
            string path = dir!.Combine("pipeline.zip");
            ml.Alignment().Model.Save(pipeline, data.Schema, path);

            var loaded = ml.Alignment().Model.Load(path, out var schema);
            try
            {
                Assert.AreEqual(data.Schema.Count, schema.Count);
                var before = pipeline.Transform(data);
                var after = loaded.Transform(data);
                CollectionAssert.AreEqual(before.GetColumn<string>("response").ToArray(), after.GetColumn<string>("response").ToArray());
                CollectionAssert.AreEqual(before.GetColumn<float>("logp").ToArray(), after.GetColumn<float>("logp").ToArray());
                CollectionAssert.AreEqual(before.GetColumn<float>("reward").ToArray(), after.GetColumn<float>("reward").ToArray());
                CollectionAssert.AreEqual(before.GetColumn<string>("question").ToArray(), after.GetColumn<string>("question").ToArray());

                // PredictionEngine works on the loaded pipeline too.
                var engine = ml.Model.CreatePredictionEngine<StylePreferenceTask.Pair, Scored>(loaded, schema);
                var one = engine.Predict(StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects[..1])[0]);
                Assert.AreEqual(before.GetColumn<float>("reward").First(), one.reward);
            }
            finally
            {
                foreach (var t in (loaded as IEnumerable<ITransformer>)!.OfType<IDisposable>()) t.Dispose();
            }
            var e = Assert.ThrowsExactly<NotSupportedException>(() => ml.Model.Save(pipeline, data.Schema, dir.Combine("plain.zip")));
            StringAssert.Contains(e.Message, "Alignment().Model.Save");
        }
    }

    sealed class Scored { public string response { get; set; } = ""; public float reward { get; set; } }

    sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}
