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
}
