using System.Text.Json;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Trainers;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Trainers;

/// <summary>End to end: ORPO and KTO move the mostly-curt SFT model to the warm style on held-out prompts, through the estimators and the CLI.</summary>
[TestClass]
public sealed class OrpoKtoAlignmentTests
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

    static (int Code, string Out, string Error) Cli(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = CliApp.Run(args, output, error);
        Console.WriteLine($"mldpo {string.Join(' ', args)} -> {code}\n{output}{error}");
        return (code, output.ToString(), error.ToString());
    }

    static void WriteJsonLines(string path, IEnumerable<object> records) => File.WriteAllLines(path, records.Select(r => JsonSerializer.Serialize(r)));

    /// <summary>
    /// The CLI as a new user runs it: init a tiny preset over bytes, <c>mldpo sft</c> with its defaults on the mostly-curt data, then
    /// the verb with its defaults (only model, data, output, epochs, seed); returns the held-out greedy answers of the result.
    /// </summary>
    static IReadOnlyList<string> CliRun(string verb, object[] data, int epochs, params string[] extra)
    {
        using var work = new TempDirectory();
        string sftData = work.Combine("sft.jsonl"), verbData = work.Combine("data.jsonl");
        WriteJsonLines(sftData, StylePreferenceTask.MostlyCurtCompletions(StylePreferenceTask.TrainSubjects));
        WriteJsonLines(verbData, data);
        Assert.AreEqual(0, Cli("init", "--preset", "tiny", "--tokenizer", "bytes", "--seed", "1", "--output", work.Combine("base")).Code);
        var sftRun = Cli("sft", "--model", work.Combine("base"), "--data", sftData, "--output", work.Combine("sft"), "--epochs", "30", "--seed", "0");
        Assert.AreEqual(0, sftRun.Code, sftRun.Error);
        using (var sftModel = LanguageModel.Load(work.Combine("sft")))
        {
            var sftAnswers = StylePreferenceTask.HeldOutAnswers(sftModel);
            Console.WriteLine("SFT answers: " + string.Join(" | ", sftAnswers));
            Assert.IsTrue(StylePreferenceTask.PreferredShare(sftAnswers) <= 0.3, "the SFT model answers mostly curtly");
        }
        var run = Cli([verb, "--model", work.Combine("sft"), "--data", verbData, "--output", work.Combine(verb), "--epochs", epochs.ToString(), "--seed", "0", .. extra]);
        Assert.AreEqual(0, run.Code, run.Error);
        using var model = LanguageModel.Load(work.Combine(verb));
        return StylePreferenceTask.HeldOutAnswers(model);
    }

    static void AssertAligned(IReadOnlyList<string> answers, string what)
    {
        double preferred = StylePreferenceTask.PreferredShare(answers);
        var degenerate = StylePreferenceTask.Degenerate(answers);
        Console.WriteLine($"{what}: preferred {preferred:F2}, degenerate {degenerate.Count}; " + string.Join(" | ", answers));
        Assert.IsTrue(preferred >= 0.8, $"{what}: {preferred:P0} of the held-out greedy answers are in the warm style: {string.Join(" | ", answers)}");
        Assert.IsEmpty(degenerate, $"{what}: degenerate answers: {string.Join(" | ", degenerate)}");
    }

    [TestMethod]
    public void OrpoAlignsTheStyleThroughTheCli() =>
        AssertAligned(CliRun("orpo", StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects), epochs: 3), "mldpo orpo");

    [TestMethod]
    public void OrpoAlignsTheStyleThroughTheEstimator()
    {
        var ml = new MLContext(seed: 0);
        var data = ml.Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects));
        using var orpo = ml.Alignment().Trainers.Orpo(new OrpoTrainer.Options
        {
            BaseModel = sft!.Model, Epochs = 3, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 32,
        }).Fit(data);
        var final = orpo.TrainingSummary!.FinalMetrics;
        foreach (var name in new[] { "nll_loss", "log_odds_ratio", "log_odds_chosen", "rewards/accuracies", "logits/chosen", "entropy", "mean_token_accuracy", "num_tokens" })
            Assert.IsTrue(final.ContainsKey(name), name);
        Assert.IsFalse(orpo.HasReference, "ORPO has no reference model");
        AssertAligned(StylePreferenceTask.HeldOutAnswers(orpo.Model), "OrpoTrainer");
    }

    [TestMethod]
    public void KtoAlignsTheStyleThroughTheEstimatorFromConvertedPairs()
    {
        var ml = new MLContext(seed: 0);
        var unpaired = PreferenceDataFile.Unpair(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects).Select(p => new PreferencePair(p.prompt, p.chosen, p.rejected)));
        Assert.HasCount(60, unpaired);
        Assert.IsTrue(unpaired[0].Label && !unpaired[1].Label && unpaired[0].Prompt == unpaired[1].Prompt, "chosen → desirable, rejected → undesirable");
        using var kto = ml.Alignment().Trainers.Kto(new KtoTrainer.Options
        {
            BaseModel = sft!.Model, Epochs = 1, LearningRate = 3e-4, MaxLength = 64, MaxPromptLength = 32,
        }).Fit(ml.Data.LoadFromUnpairedPreferences(unpaired));
        var final = kto.TrainingSummary!.FinalMetrics;
        foreach (var name in new[] { "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logits/chosen", "entropy", "mean_token_accuracy", "num_tokens" })
            Assert.IsTrue(final.ContainsKey(name), name);
        Assert.IsTrue(final["kl"] >= 0, "the reference point is clamped at 0");
        Assert.IsTrue(kto.HasReference);
        var pair = StylePreferenceTask.Pairs(StylePreferenceTask.HeldOutSubjects)[0];
        Assert.IsTrue(kto.ImplicitReward(pair.prompt, pair.chosen) > kto.ImplicitReward(pair.prompt, pair.rejected), "held-out implicit reward prefers the warm answer");
        AssertAligned(StylePreferenceTask.HeldOutAnswers(kto.Model), "KtoTrainer");
    }

    [TestMethod]
    public void KtoAlignsTheStyleThroughTheCliFromUnpairedRecords() =>
        AssertAligned(CliRun("kto", StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects)
            .SelectMany(p => new object[] { new { p.prompt, completion = p.chosen, label = true }, new { p.prompt, completion = p.rejected, label = false } }).ToArray(), epochs: 3), "mldpo kto");

    sealed class SyncProgress(Action<Microsoft.ML.Dpo.Training.TrainingProgress> report) : IProgress<Microsoft.ML.Dpo.Training.TrainingProgress>
    {
        public void Report(Microsoft.ML.Dpo.Training.TrainingProgress value) => report(value);
    }

    /// <summary>A C# function as a judge: 1 for a curt answer, 0 otherwise (so ORPO toward the warm style makes it worse).</summary>
    sealed class CurtJudge : Microsoft.ML.Dpo.Feedback.IJudge
    {
        public Task<IReadOnlyList<double?>> ScoreAsync(IReadOnlyList<(string Prompt, string Completion)> items, CancellationToken cancellationToken = default) =>
            Task.FromResult<IReadOnlyList<double?>>(items.Select(i => (double?)(StylePreferenceTask.Curt.Contains(i.Completion.Trim()) ? 1 : 0)).ToList());
    }

    [TestMethod]
    public void SaveBestKeepsTheBestEvaluationsWeightsAndEarlyStoppingStops()
    {
        // A judge that prefers the curt answers: ORPO toward the warm style only lowers eval/win_rate, so the first evaluation stays
        // the best, training stops after `patience` evaluations without an improvement, and the fitted model is rolled back.
        var prompts = StylePreferenceTask.HeldOutSubjects.Select(StylePreferenceTask.Prompt).ToList();
        var data = new MLContext(seed: 0).Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects));
        OrpoTrainer.Options Options() => new()
        {
            BaseModel = sft!.Model, Epochs = 3, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 32, LoggingInterval = 1,
            Schedule = Microsoft.ML.Dpo.Training.LearningRateScheduleKind.Constant,   // step k's weights do not depend on the planned length
        };
        var evals = new List<(int Step, double WinRate)>();
        var lines = new List<string>();
        var options = Options();
        options.EvaluationPrompts = prompts;
        options.EvaluationSteps = 1;
        options.EvaluationJudge = new CurtJudge();
        options.EvaluationGeneration = new Microsoft.ML.Dpo.Generation.GenerationOptions { MaxNewTokens = 20 };
        options.BestModelMetric = "eval/win_rate";
        options.EarlyStoppingPatience = 3;
        options.Log = lines.Add;
        options.Progress = new SyncProgress(p => { if (p.Metrics.TryGetValue("eval/win_rate", out double v)) evals.Add((p.Step, v)); });
        using var orpo = new MLContext(seed: 0).Alignment().Trainers.Orpo(options).Fit(data);
        var summary = orpo.TrainingSummary!;
        Console.WriteLine("eval/win_rate per step: " + string.Join(", ", evals.Select(e => $"{e.Step}:{e.WinRate:G4}")) + $"; best {summary.BestStep} ({summary.BestMetricValue}), steps {summary.Steps}");
        var best = evals.First(e => e.WinRate == evals.Max(x => x.WinRate));   // the first maximum: later ties are no improvement
        Assert.AreEqual(best.Step, summary.BestStep);
        Assert.AreEqual(best.WinRate, summary.BestMetricValue);
        Assert.IsTrue(summary.StoppedEarly);
        Assert.AreEqual(best.Step + 3, summary.Steps, "stopped after 3 evaluations without an improvement");
        Assert.IsTrue(lines.Any(l => l.StartsWith("Early stopping at step", StringComparison.Ordinal)));
        Assert.IsTrue(lines.Any(l => l.StartsWith("Best model: eval/win_rate=", StringComparison.Ordinal)));

        // The fitted model has exactly the weights of a run that stopped at the best step.
        var reference = Options();
        reference.MaxSteps = summary.BestStep!.Value;
        using var atBest = new MLContext(seed: 0).Alignment().Trainers.Orpo(reference).Fit(data);
        var expected = atBest.Model.Network.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, parameter) in orpo.Model.Network.named_parameters())
            Assert.AreEqual(0.0, (parameter - expected[name]).abs().max().item<float>(), 1e-6, name);
    }
}
