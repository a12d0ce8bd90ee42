using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Trainers;
using static TorchSharp.torch;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>End to end: SFT teaches the curt style, DPO flips the preference to the warm style on held-out prompts.</summary>
[TestClass]
public sealed class DpoAlignmentTests
{
    static TempDirectory? dir;
    static LanguageModelTransformer? sft;

    [ClassInitialize]
    public static void TrainSft(TestContext _)
    {
        dir = new TempDirectory();
        var ml = new MLContext(seed: 0);
        using var baseModel = StylePreferenceTask.CreateBaseModel(dir.Path);
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.MostlyCurtCompletions(StylePreferenceTask.TrainSubjects));
        sft = ml.Alignment().Trainers.Sft(new SftTrainer.Options
        {
            BaseModel = baseModel, Epochs = 20, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, MaxLength = 64, MaxPromptLength = 40,
        }).Fit(data);
    }

    [ClassCleanup]
    public static void Cleanup()
    {
        sft?.Dispose();
        dir?.Dispose();
    }

    static LanguageModelTransformer Dpo(double beta, int epochs = 10)
    {
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects));
        return ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
        {
            BaseModel = sft!.Model, Beta = beta, Epochs = epochs, BatchSize = 8, LearningRate = 1e-4, MaxLength = 64, MaxPromptLength = 40,
        }).Fit(data);
    }

    static double PreferenceAccuracy(LanguageModelTransformer model, string[] subjects) =>
        StylePreferenceTask.Pairs(subjects).Average(p => model.ImplicitReward(p.prompt, p.chosen) > model.ImplicitReward(p.prompt, p.rejected) ? 1.0 : 0.0);

    static double WarmShare(LanguageModelTransformer model, string[] subjects)
    {
        var generated = model.Model.CreateGenerator().Generate(subjects.Select(StylePreferenceTask.Prompt).ToList(), new GenerationOptions { MaxNewTokens = 20 });
        Console.WriteLine("generated: " + string.Join(" | ", generated));
        return generated.Average(g => StylePreferenceTask.Warm.Any(w => g.StartsWith(w, StringComparison.Ordinal)) ? 1.0 : 0.0);
    }

    [TestMethod]
    public void SftModelPrefersTheCurtStyle()
    {
        var generated = sft!.Model.CreateGenerator().Generate(StylePreferenceTask.HeldOutSubjects.Select(StylePreferenceTask.Prompt).ToList(), new GenerationOptions { MaxNewTokens = 20 });
        double curt = generated.Average(g => StylePreferenceTask.Curt.Contains(g) ? 1.0 : 0.0);
        Assert.IsTrue(curt >= 0.9, $"SFT should answer curtly; got: {string.Join(" | ", generated)}");
        Assert.AreEqual(0.0, WarmShare(sft, StylePreferenceTask.HeldOutSubjects));
    }

    [TestMethod]
    public void DpoFlipsThePreferenceOnHeldOutPrompts()
    {
        using var dpo = Dpo(beta: 0.1);
        double accuracy = PreferenceAccuracy(dpo, StylePreferenceTask.HeldOutSubjects);
        double warm = WarmShare(dpo, StylePreferenceTask.HeldOutSubjects);
        Console.WriteLine($"held-out preference accuracy {accuracy:F2}, warm greedy share {warm:F2}; final metrics: " +
                          string.Join(", ", dpo.TrainingSummary!.FinalMetrics.Select(kv => $"{kv.Key}={kv.Value:G3}")));
        Assert.IsTrue(accuracy >= 0.9, $"held-out preference accuracy {accuracy}");
        Assert.IsTrue(warm > 0.5, $"warm share of greedy answers {warm}");
    }
}
