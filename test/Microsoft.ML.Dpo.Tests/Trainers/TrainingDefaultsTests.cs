using Microsoft.ML.Dpo.Losses;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Samples;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Trainers;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>The one set of defaults (<see cref="TrainingDefaults"/>): the learning rate by the model's origin, RPO with the default loss, the same in C# and the CLI.</summary>
[TestClass]
public sealed class TrainingDefaultsTests
{
    [TestMethod]
    public void LearningRateFollowsTheModelsOriginThroughSaveAndTraining()
    {
        using var dir = new TempDirectory();
        using var preset = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 1);
        Assert.IsTrue(preset.Network.Config.StartedFromRandomWeights);
        Assert.AreEqual(3e-3, TrainingDefaults.LearningRate(TrainingStage.SupervisedFineTuning, preset.Network.Config));
        Assert.AreEqual(3e-3, TrainingDefaults.LearningRate(TrainingStage.PreferenceOptimization, preset.Network.Config));

        // Saved and loaded, and trained: the lineage stays "from scratch".
        preset.Save(dir.Combine("base"));
        StringAssert.Contains(File.ReadAllText(dir.Combine("base", "config.json")), "\"mldpo_started_from_random_weights\": true");
        using var loaded = LanguageModel.Load(dir.Combine("base"));
        Assert.IsTrue(loaded.Network.Config.StartedFromRandomWeights);
        var lines = new List<string>();
        var ml = new MLContext(seed: 0);
        using (var sft = ml.Alignment().Trainers.Sft(new SftTrainer.Options { BaseModel = loaded, MaxSteps = 1, MaxLength = 64, MaxPromptLength = 40, Log = lines.Add })
                   .Fit(ml.Data.LoadFromEnumerable(StyleTask.Polite.SftExamples().Take(4).Select(e => new StylePreferenceTask.Completion { prompt = e.Prompt, completion = e.Completion }))))
        {
            Assert.IsTrue(sft.Model.Network.Config.StartedFromRandomWeights);
            Assert.AreEqual(3e-3, sft.TrainingSummary!.FinalMetrics["learning_rate"], 1e-12, "the first step runs at the peak rate");
        }
        Assert.IsTrue(lines.Any(l => l.StartsWith("Learning rate 0.003 (automatic: the model was trained from scratch", StringComparison.Ordinal)), string.Join("\n", lines));

        // A model the library did not initialise (a pretrained checkpoint, or one built by hand) gets TRL's fine-tuning rates.
        using var other = StylePreferenceTask.CreateBaseModel(dir.Combine("other"));
        Assert.IsFalse(other.Network.Config.StartedFromRandomWeights);
        Assert.AreEqual(2e-5, TrainingDefaults.LearningRate(TrainingStage.SupervisedFineTuning, other.Network.Config));
        Assert.AreEqual(1e-6, TrainingDefaults.LearningRate(TrainingStage.PreferenceOptimization, other.Network.Config));
        other.Save(dir.Combine("other-hf"));
        Assert.IsFalse(File.ReadAllText(dir.Combine("other-hf", "config.json")).Contains("mldpo_started_from_random_weights", StringComparison.Ordinal));
    }

    [TestMethod]
    public void AnExplicitLearningRateIsUsedAsGivenAndNotReported()
    {
        using var dir = new TempDirectory();
        using var preset = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 1);
        var lines = new List<string>();
        var ml = new MLContext(seed: 0);
        using var sft = ml.Alignment().Trainers.Sft(new SftTrainer.Options
        {
            BaseModel = preset, MaxSteps = 2, LearningRate = 5e-4, WarmupSteps = 2, Schedule = Microsoft.ML.Dpo.Training.LearningRateScheduleKind.Constant,
            LoggingInterval = 1, MaxLength = 64, MaxPromptLength = 40, Log = lines.Add,
        }).Fit(ml.Data.LoadFromEnumerable(StyleTask.Polite.SftExamples().Take(8).Select(e => new StylePreferenceTask.Completion { prompt = e.Prompt, completion = e.Completion })));
        Assert.AreEqual(5e-4 * 2 / 3, sft.TrainingSummary!.FinalMetrics["learning_rate"], 1e-12, "warm-up step 2 of 2 at the given rate");
        Assert.IsFalse(lines.Any(l => l.Contains("(automatic", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void DpoWarmsUpOverTheFirstTenthOfItsStepsUnlessTold()
    {
        using var dir = new TempDirectory();
        using var preset = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 1);
        var ml = new MLContext(seed: 0);
        var pairs = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects[..20]));   // 20 pairs, batch 2: 10 steps per epoch
        int run = 0;
        double[] Rates(double? warmupRatio, int warmupSteps, List<string>? log = null)
        {
            using var dpo = ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
            {
                BaseModel = preset, Epochs = 2, BatchSize = 2, LearningRate = 1e-3, WarmupRatio = warmupRatio, WarmupSteps = warmupSteps,
                LoggingInterval = 1, MaxLength = 64, MaxPromptLength = 40, Log = log is null ? null : log.Add, CheckpointDirectory = dir.Combine("run" + run++),
            }).Fit(pairs);
            // Each row's rate, as logged (rounded to 4 significant digits): the tolerances below are relative 1e-3.
            return File.ReadLines(dpo.TrainingSummary!.MetricsFile!).Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("learning_rate").GetDouble()).ToArray();
        }
        var lines = new List<string>();
        double[] automatic = Rates(null, 0, lines);   // 20 steps: 2 of warm-up
        Assert.AreEqual(20, automatic.Length);
        Assert.AreEqual(1e-3 / 3, automatic[0], 1e-6);
        Assert.AreEqual(1e-3 * 2 / 3, automatic[1], 1e-6);
        Assert.AreEqual(1e-3, automatic[2], 1e-6);
        Assert.IsTrue(lines.Any(l => l.StartsWith("Warm-up: the first 10% of the steps (automatic", StringComparison.Ordinal)), string.Join("\n", lines));
        Assert.AreEqual(1e-3, Rates(0, 0)[0], 1e-6, "WarmupRatio 0: no warm-up");
        double[] quarter = Rates(0.25, 0);            // ⌈0.25 × 20⌉ = 5
        Assert.AreEqual(1e-3 * 5 / 6, quarter[4], 1e-6);
        Assert.AreEqual(1e-3, quarter[5], 1e-6);
        Assert.AreEqual(1e-3 / 2, Rates(0.25, 1)[0], 1e-6, "WarmupSteps above 0 overrides the ratio");
        Assert.AreEqual(0, TrainingDefaults.WarmupRatio(TrainingStage.SupervisedFineTuning), "SFT keeps no warm-up");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new DpoTrainer.Options { BaseModel = preset, WarmupRatio = 1 }.Validate());
    }

    [TestMethod]
    public void BetaFollowsTheModelsOriginUnlessGiven()
    {
        using var dir = new TempDirectory();
        using var preset = ModelPresets.CreateModel("llama", "tiny", TextTokenizer.CreateByteLevel(dir.Combine("tok")), seed: 1);
        Assert.AreEqual(0.3, TrainingDefaults.DpoBeta(preset.Network.Config));
        using var pretrained = StylePreferenceTask.CreateBaseModel(dir.Combine("other"));   // not initialised by the library
        Assert.IsFalse(pretrained.Network.Config.StartedFromRandomWeights);
        Assert.AreEqual(0.1, TrainingDefaults.DpoBeta(pretrained.Network.Config));

        var ml = new MLContext(seed: 0);
        var pairs = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects[..4]));
        (double Beta, List<string> Log) Fit(double? beta)
        {
            var lines = new List<string>();
            using var dpo = ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
            {
                BaseModel = preset, MaxSteps = 1, BatchSize = 2, Beta = beta, MaxLength = 64, MaxPromptLength = 40, Log = lines.Add,
            }).Fit(pairs);
            return (dpo.Beta, lines);
        }
        var automatic = Fit(null);
        Assert.AreEqual(0.3, automatic.Beta, "the fitted model's implicit reward uses the β it was trained with");
        Assert.IsTrue(automatic.Log.Any(l => l.StartsWith("β 0.3 (automatic: the model was trained from scratch", StringComparison.Ordinal)), string.Join("\n", automatic.Log));
        var given = Fit(0.05);
        Assert.AreEqual(0.05, given.Beta);
        Assert.IsFalse(given.Log.Any(l => l.StartsWith("β ", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void RpoAccompaniesOnlyTheDefaultLoss()
    {
        Assert.AreEqual(1.0, new DpoTrainer.Options().EffectiveRpoAlpha);
        Assert.AreEqual(0.0, new DpoTrainer.Options { RpoAlpha = 0 }.EffectiveRpoAlpha);
        Assert.AreEqual(0.0, new DpoTrainer.Options { LossKind = PreferenceLossKind.Ipo }.EffectiveRpoAlpha, "a loss chosen explicitly is used as given");
        Assert.AreEqual(0.0, new DpoTrainer.Options { LossKinds = [PreferenceLossKind.Sigmoid, PreferenceLossKind.Sft], LossWeights = [1, 0.5] }.EffectiveRpoAlpha);
        Assert.AreEqual(0.5, new DpoTrainer.Options { LossKind = PreferenceLossKind.Ipo, RpoAlpha = 0.5 }.EffectiveRpoAlpha);
        var terms = new DpoTrainer.Options().LossOptions.Terms.Select(t => (t.Kind, t.Weight)).ToList();
        CollectionAssert.AreEqual(new[] { (PreferenceLossKind.Sigmoid, 1.0), (PreferenceLossKind.Sft, 1.0) }, terms);
    }

    [TestMethod]
    public void TheCliFlagsDefaultToTheLibrarysOptions()
    {
        var output = new StringWriter();
        Assert.AreEqual(0, CliApp.Run(["dpo", "--help"], output, output));
        string help = output.ToString();
        var defaults = new DpoTrainer.Options();
        Assert.IsNull(defaults.LearningRate, "the learning rate is chosen by the model's origin");
        Assert.IsNull(new SftTrainer.Options().LearningRate);
        StringAssert.Contains(help, "0.003 for a model trained from scratch");
        StringAssert.Contains(help, "else 1E-06");
        Assert.IsNull(defaults.Beta, "β is chosen by the model's origin");
        Assert.IsNull(defaults.WarmupRatio, "the warm-up is chosen by the trainer");
        StringAssert.Contains(help, "0.3 for a model trained from scratch, else 0.1");
        StringAssert.Contains(help, "default: 0.1 for dpo, 0 for the other trainers");
        foreach (var (flag, value) in new[] { ("--epochs", defaults.Epochs), ("--batch-size", defaults.BatchSize), ("--seed", defaults.Seed) })
            StringAssert.Matches(help, new System.Text.RegularExpressions.Regex(System.Text.RegularExpressions.Regex.Escape(flag) + @"[^\n]*\n?[^\n]*\[default: " +
                System.Text.RegularExpressions.Regex.Escape(value.ToString(System.Globalization.CultureInfo.InvariantCulture)) + @"\]"), flag);
    }
}
