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
        var displaced = Run(o => { o.LearningRate = 3e-3; o.Beta = 0.05; o.RpoAlpha = 0; }, out var displacedRewards);
        Console.WriteLine("displacing: " + string.Join(", ", displacedRewards.Select(r => r.ToString("G3"))));
        Assert.HasCount(1, displaced, string.Join(", ", displacedRewards));
        StringAssert.Contains(displaced[0], "rewards/chosen");
        StringAssert.Contains(displaced[0], "--rpo-alpha");
        // Healthy: the same with RPO's NLL term, which keeps the chosen likelihood rising.
        var healthy = Run(o => { o.LearningRate = 3e-3; o.Beta = 0.05; o.RpoAlpha = 1; }, out var healthyRewards);
        Console.WriteLine("healthy: " + string.Join(", ", healthyRewards.Select(r => r.ToString("G3"))));
        Assert.IsEmpty(healthy, string.Join("\n", healthy));
    }

    /// <summary>A C# function as a judge: 1 for an answer in the warm style, 0 otherwise.</summary>
    sealed class WarmStyleJudge : Microsoft.ML.Dpo.Feedback.IJudge
    {
        public static double Score(string answer) => StylePreferenceTask.Warm.Any(w => answer.StartsWith(w, StringComparison.Ordinal)) ? 1 : 0;

        public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<double?>>(items.Select(i => (double?)Score(i.Completion)).ToList());
    }

    [TestMethod]
    public void EvaluationByGenerationLogsWinRateLengthAndDegeneration()
    {
        var prompts = StylePreferenceTask.HeldOutSubjects.Select(StylePreferenceTask.Prompt).ToList();
        var generation = new GenerationOptions { MaxNewTokens = 20 };
        var reports = new List<(int Step, IReadOnlyDictionary<string, double> Metrics)>();
        var lines = new List<string>();
        var ml = new MLContext(seed: 0);
        var options = new DpoTrainer.Options
        {
            BaseModel = sft!.Model, Beta = 0.1, Epochs = 2, BatchSize = 8, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 2,
            EvaluationPrompts = prompts, EvaluationSteps = 4, EvaluationJudge = new WarmStyleJudge(), EvaluationGeneration = generation,
            Progress = new Progress(p => reports.Add((p.Step, p.Metrics))), Log = lines.Add,
        };
        using var dpo = ml.Alignment().Trainers.Dpo(options).Fit(ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects)));

        Assert.AreEqual(8, dpo.TrainingSummary!.Steps);
        CollectionAssert.AreEqual(new[] { 4, 8 }, reports.Where(r => r.Metrics.ContainsKey("eval/win_rate")).Select(r => r.Step).ToArray(), "every 4 steps and at the end");
        Assert.IsTrue(lines.Any(l => l.StartsWith("eval at step 4:", StringComparison.Ordinal)));
        Assert.IsTrue(lines.Any(l => l.Contains("policy: \"") && l.Contains("reference: \"")), "side-by-side samples");

        // The logged numbers are those of the final model's own greedy answers against the SFT model's.
        var policy = dpo.Model.CreateGenerator().Generate(prompts, generation);
        var reference = sft.Model.CreateGenerator().Generate(prompts, generation);
        double expectedWinRate = policy.Select((a, i) => WarmStyleJudge.Score(a).CompareTo(WarmStyleJudge.Score(reference[i])) switch { > 0 => 1.0, 0 => 0.5, _ => 0.0 }).Average();
        var final = reports[^1].Metrics;
        Assert.AreEqual(expectedWinRate, final["eval/win_rate"], 1e-12);
        Assert.AreEqual(policy.Average(a => (double)dpo.Model.RequireTokenizer().Encode(a).Count), final["eval/mean_length"], 1e-9);
        Assert.AreEqual(policy.Average(Microsoft.ML.Dpo.Training.GenerationEvaluation.RepeatedBigramShare), final["eval/repeated_ngram_share"], 1e-12);
        Assert.AreEqual(0.0, final["eval/unjudged"]);
        Console.WriteLine($"win rate {expectedWinRate}, answers: {string.Join(" | ", policy.Take(5))}");
    }

    [TestMethod]
    public void RepeatedBigramShareMeasuresLoops()
    {
        Assert.AreEqual(0.0, Microsoft.ML.Dpo.Training.GenerationEvaluation.RepeatedBigramShare("Happy to help!"));
        Assert.AreEqual(2.0 / 3, Microsoft.ML.Dpo.Training.GenerationEvaluation.RepeatedBigramShare("CU CU CU CU"), 1e-15);   // 3 bigrams, 2 repeat the first
        Assert.AreEqual(0.0, Microsoft.ML.Dpo.Training.GenerationEvaluation.RepeatedBigramShare("No."));
        Assert.AreEqual(4.0 / 7, Microsoft.ML.Dpo.Training.GenerationEvaluation.RepeatedBigramShare("a b c a b c a b"), 1e-15);   // ab bc ca, then ab bc ca ab repeat
    }

    sealed class Progress(Action<Microsoft.ML.Dpo.Training.TrainingProgress> report) : IProgress<Microsoft.ML.Dpo.Training.TrainingProgress>
    {
        public void Report(Microsoft.ML.Dpo.Training.TrainingProgress value) => report(value);
    }
}
