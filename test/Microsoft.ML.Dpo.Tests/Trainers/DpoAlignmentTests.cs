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
        sft = StylePreferenceTask.TrainSft(dir.Path);
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

    [TestMethod]
    public void LargerBetaKeepsThePolicyCloserToTheReference()
    {
        // Long enough for the loss to saturate: then β sets how far the policy has drifted.
        using var loose = Dpo(beta: 0.05, epochs: 30);
        using var tight = Dpo(beta: 1.0, epochs: 30);
        double klLoose = HeldOutKl(loose), klTight = HeldOutKl(tight);
        Console.WriteLine($"held-out KL(policy || reference): beta 0.05 -> {klLoose:G4}, beta 1.0 -> {klTight:G4}");
        Assert.IsTrue(klTight < klLoose / 2, $"KL with beta 1.0 ({klTight}) should be well below KL with beta 0.05 ({klLoose})");
    }

    /// <summary>
    /// Mean over held-out prompts of the token-level KL(π‖π_ref) summed over the positions of both completions
    /// (teacher-forced on the chosen and rejected answers).
    /// </summary>
    static double HeldOutKl(LanguageModelTransformer model)
    {
        var policy = model.Model;
        var reference = sft!.Model;
        double total = 0;
        var pairs = StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects);
        using var _ = no_grad();
        foreach (var pair in pairs)
            foreach (string answer in new[] { pair.chosen, pair.rejected })
            {
                using var scope = NewDisposeScope();
                int[] prompt = policy.EncodePrompt(pair.prompt), completion = policy.EncodeCompletion(answer);
                var ids = tensor(prompt.Concat(completion).Select(i => (long)i).ToArray()).unsqueeze(0);
                var logP = policy.Network.Forward(ids).log_softmax(-1)[0, (prompt.Length - 1)..^1];
                var logQ = reference.Network.Forward(ids).log_softmax(-1)[0, (prompt.Length - 1)..^1];
                total += (logP.exp() * (logP - logQ)).sum().item<float>();
            }
        return total / pairs.Length;
    }
    [TestMethod]
    public void LikelihoodDisplacementIsWarnedOnARunBuiltToDisplaceAndNotOnAHealthyOne()
    {
        List<string> Run(Action<DpoTrainer.Options> configure, out List<double> chosenRewards)
        {
            var ml = new MLContext();
            var warnings = new List<string>();
            ml.Log += (_, e) => { if (e.Kind == Microsoft.ML.Runtime.ChannelMessageKind.Warning) lock (warnings) warnings.Add(e.Message); };
            var rewards = new List<double>();
            var lines = new List<string>();
            var options = new DpoTrainer.Options
            {
                BaseModel = sft!.Model, Epochs = 2, BatchSize = 8, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1,
            };
            configure(options);
            options.Progress = new Progress(p => rewards.Add(p.Metrics["rewards/chosen"]));
            options.Log = lines.Add;
            using var _ = ml.Alignment().Trainers.Dpo(options).Fit(ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects)));
            chosenRewards = rewards;
            lock (warnings)
            {
                Assert.AreEqual(warnings.Count, lines.Count(l => l.StartsWith("warning: ", StringComparison.Ordinal)), "the same warning in Options.Log and ML.NET's log");
                return warnings.ToList();
            }
        }
        // Built to displace: a large learning rate and a small β; DPO lowers both likelihoods, the chosen one too.
        var displaced = Run(o => { o.LearningRate = 3e-3; o.Beta = 0.05; }, out var displacedRewards);
        Console.WriteLine("displacing: " + string.Join(", ", displacedRewards.Select(r => r.ToString("G3"))));
        Assert.HasCount(1, displaced, string.Join(", ", displacedRewards));
        StringAssert.Contains(displaced[0], "rewards/chosen");
        StringAssert.Contains(displaced[0], "--rpo-alpha");
        // Healthy: the same with RPO's NLL term, which keeps the chosen likelihood rising.
        var healthy = Run(o => { o.LearningRate = 3e-3; o.Beta = 0.05; o.RpoAlpha = 1; }, out var healthyRewards);
        Console.WriteLine("healthy: " + string.Join(", ", healthyRewards.Select(r => r.ToString("G3"))));
        Assert.IsEmpty(healthy, string.Join("\n", healthy));
    }

    sealed class Progress(Action<Microsoft.ML.Dpo.Training.TrainingProgress> report) : IProgress<Microsoft.ML.Dpo.Training.TrainingProgress>
    {
        public void Report(Microsoft.ML.Dpo.Training.TrainingProgress value) => report(value);
    }
}
