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

        // A repeated run (restarting: the checkpoint is discarded, the cache kept) reads the cache (same result) instead of recomputing.
        var lines = new List<string>();
        var again = Losses(Options(o =>
        {
            o.PrecomputeReferenceLogProbs = true; o.CheckpointDirectory = precomputeDir.Path; o.Log = lines.Add; o.ExistingCheckpoint = ExistingCheckpointAction.Restart;
        }), out var againModel);
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
    public void LoraFitOfAnInMemoryModelSharesItsFrozenWeightsAndNeverModifiesThem()
    {
        float[] before = Weights(baseModel!);
        var lora = new Microsoft.ML.Dpo.Lora.LoraOptions { Rank = 4, TargetModules = ["all-linear"] };
        Losses(Options(o => { o.Lora = lora; o.MaxSteps = 3; }), out var shared);
        Losses(Options(o => { o.Lora = lora; o.MaxSteps = 3; o.BaseModel = null; o.BaseModelPath = dir!.Combine("base-hf"); }), out var fromPath);
        using (shared) using (fromPath)
        {
            CollectionAssert.AreEqual(before, Weights(baseModel!), "LoRA never writes a base weight");
            // No copy was made: every frozen weight of the fitted model is the caller's own storage.
            var callers = baseModel!.Network.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            int sharedCount = 0;
            foreach (var (name, p) in shared.Model.Network.named_parameters().Where(np => !np.parameter.requires_grad))
            {
                var own = callers[name.Replace(".base_layer.", ".")];
                Assert.IsTrue(System.Runtime.CompilerServices.Unsafe.AreSame(
                    ref System.Runtime.InteropServices.MemoryMarshal.GetReference(p.bytes),
                    ref System.Runtime.InteropServices.MemoryMarshal.GetReference(own.bytes)), name);
                sharedCount++;
            }
            Assert.AreEqual(callers.Count, sharedCount);
            CollectionAssert.AreEqual(Weights(fromPath.Model), Weights(shared.Model), "sharing trains exactly like a loaded copy");
            // Merging writes new storage, so the caller's model still stays as it was, and the merged model computes the same.
            using var ids = tensor(new long[] { 3, 7, 11, 5 }).unsqueeze(0);
            using var adapted = shared.Model.Network.Forward(ids);
            shared.Model.Lora!.MergeAndUnload(shared.Model);
            using var merged = shared.Model.Network.Forward(ids);
            Assert.IsTrue(adapted.allclose(merged, rtol: 1e-4, atol: 1e-5));
            CollectionAssert.AreEqual(before, Weights(baseModel!), "merging the fitted model's adapters leaves the caller's model alone");
        }
        CollectionAssert.AreEqual(before, Weights(baseModel!), "disposing the fitted model leaves the caller's model usable");
    }

    [TestMethod]
    public void ThroughputMfuAndPeakMemoryAreLoggedWithTheirAccounting()
    {
        var reports = new List<IReadOnlyDictionary<string, double>>();
        var options = Options(o => { o.MaxSteps = 2; o.PeakFlops = 1e9; });
        options.Progress = new SyncProgress(p => reports.Add(p.Metrics));
        using var model = new MLContext().Alignment().Trainers.Dpo(options).Fit(Pairs(new MLContext()));
        var last = reports[^1];
        double policy = last["flops_per_second/policy"], reference = last["flops_per_second/reference"];
        Assert.IsTrue(policy > 0 && reference > 0);
        // The live reference runs one forward, the policy a forward and a backward (three), over the same sequences.
        Assert.AreEqual(3.0, policy / reference, 1e-9);
        Assert.AreEqual(policy + reference, last["flops_per_second"], 1e-6 * last["flops_per_second"]);
        Assert.AreEqual(last["flops_per_second"] / 1e9, last["mfu"], 1e-12);
        Assert.IsTrue(last["tokens_per_second"] > 0);
        if (OperatingSystem.IsLinux()) Assert.IsTrue(last["peak_rss_mib"] > 50, $"{last["peak_rss_mib"]}");

        // Without a known peak, MFU is left out; with a precomputed reference, no reference FLOPs are counted in the steps.
        reports.Clear();
        using var precomputeDir = new TempDirectory();
        var precomputed = Options(o => { o.MaxSteps = 2; o.PrecomputeReferenceLogProbs = true; o.CheckpointDirectory = precomputeDir.Path; });
        precomputed.Progress = new SyncProgress(p => reports.Add(p.Metrics));
        using var second = new MLContext().Alignment().Trainers.Dpo(precomputed).Fit(Pairs(new MLContext()));
        Assert.IsFalse(reports[^1].ContainsKey("mfu"));
        Assert.IsFalse(reports[^1].ContainsKey("flops_per_second/reference"));
        Assert.IsTrue(reports[^1]["flops_per_second"] > 0);
        StringAssert.Contains(File.ReadAllLines(Path.Combine(precomputeDir.Path, "metrics.jsonl"))[^1], "\"flops_per_second\"");
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
    public void HardReferenceCopyEveryStepKeepsTheLossAtLn2()
    {
        // TR-DPO with α = 1 every step: each step starts with reference = policy, so every reward is 0 and the sigmoid loss is ln 2
        // (plain sigmoid: without the default NLL term).
        float[] before = Weights(baseModel!);
        var losses = Losses(Options(o => { o.MaxSteps = 4; o.SyncReferenceSteps = 1; o.SyncReferenceAlpha = 1; o.RpoAlpha = 0; }), out var synced);
        var frozen = Losses(Options(o => { o.MaxSteps = 4; o.RpoAlpha = 0; }), out var plain);
        using (synced) using (plain)
        {
            Assert.HasCount(4, losses);
            foreach (double loss in losses) Assert.AreEqual(Math.Log(2), loss, 1e-5);
            Assert.IsTrue(frozen.Skip(1).All(l => Math.Abs(l - Math.Log(2)) > 1e-3), string.Join(", ", frozen));
            CollectionAssert.AreEqual(before, Weights(baseModel!), "the caller's base model is not synced");
            Assert.IsTrue(synced.HasReference, "the fitted model keeps the starting reference for implicit rewards");
        }
    }

    [TestMethod]
    public void ReferenceSyncingRefusesWhatItCannotDo()
    {
        var lora = Assert.ThrowsExactly<NotSupportedException>(() => Options(o => { o.SyncReferenceSteps = 2; o.Lora = new Microsoft.ML.Dpo.Lora.LoraOptions(); }).Validate());
        StringAssert.Contains(lora.Message, "LoRA");
        var precomputed = Assert.ThrowsExactly<ArgumentException>(() => Options(o => { o.SyncReferenceSteps = 2; o.PrecomputeReferenceLogProbs = true; }).Validate());
        StringAssert.Contains(precomputed.Message, "stale");
        var rpo = Assert.ThrowsExactly<ArgumentException>(() => Options(o => { o.RpoAlpha = 1; o.LossKinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.Sft]; }).Validate());
        StringAssert.Contains(rpo.Message, "RpoAlpha");
        var wpo = Assert.ThrowsExactly<ArgumentException>(() => Options(o => { o.UseWeighting = true; o.LossKind = PreferenceLossKind.Aot; }).Validate());
        StringAssert.Contains(wpo.Message, "Aot");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => Options(o => o.LdAlpha = 1.5).Validate());
    }

    [TestMethod]
    public void TrlMetricsAreLogged()
    {
        var reports = new List<IReadOnlyDictionary<string, double>>();
        var options = Options(o => { o.MaxSteps = 3; o.LossKinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.BcoPair]; o.LossWeights = [0.8, 0.2]; o.RpoAlpha = 1; o.LdAlpha = 0.5; o.UseWeighting = true; });
        options.Progress = new SyncProgress(p => reports.Add(p.Metrics));
        using var model = new MLContext().Alignment().Trainers.Dpo(options).Fit(Pairs(new MLContext()));
        Assert.HasCount(3, reports);
        foreach (var name in new[] { "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy", "num_tokens", "nll_loss", "wpo_weight" })
            Assert.IsTrue(reports.All(r => r.ContainsKey(name) && double.IsFinite(r[name])), name);
        Assert.IsTrue(reports.All(r => r["entropy"] > 0 && r["entropy"] <= Math.Log(257) + 1e-9), "entropy in (0, ln V]");
        Assert.IsTrue(reports.All(r => r["mean_token_accuracy"] is >= 0 and <= 1));
        Assert.IsTrue(reports[0]["num_tokens"] > 0 && reports[1]["num_tokens"] > reports[0]["num_tokens"] && reports[2]["num_tokens"] > reports[1]["num_tokens"], "num_tokens accumulates");
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
