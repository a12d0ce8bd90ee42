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
        foreach (var (flag, value) in new[] { ("--beta", defaults.Beta), ("--epochs", defaults.Epochs), ("--batch-size", defaults.BatchSize), ("--seed", defaults.Seed) })
            StringAssert.Matches(help, new System.Text.RegularExpressions.Regex(System.Text.RegularExpressions.Regex.Escape(flag) + @"[^\n]*\n?[^\n]*\[default: " +
                System.Text.RegularExpressions.Regex.Escape(value.ToString(System.Globalization.CultureInfo.InvariantCulture)) + @"\]"), flag);
    }
}
