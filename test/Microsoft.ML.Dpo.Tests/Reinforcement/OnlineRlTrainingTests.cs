using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Reinforcement;
using Microsoft.ML.Dpo.Tests.Trainers;
using Microsoft.ML.Dpo.Trainers;

namespace Microsoft.ML.Dpo.Tests.Reinforcement;

/// <summary>
/// End to end on the style task: the SFT model answers mostly curtly ("No.", "Go away."); a verifiable reward — the answer is
/// exactly one of the warm answers (a regular expression; a looser rule such as "ends with !" is gamed within a few steps by
/// answering "!") — must move its held-out greedy answers to the warm style.
/// </summary>
[TestClass]
public sealed class OnlineRlTrainingTests
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

    /// <summary>The verifiable reward: the whole answer is one of the warm answers.</summary>
    internal const string WarmPattern = "^(Happy to help!|Gladly, friend!)$";

    /// <summary>
    /// The rewards: 1 for exactly a warm answer, plus 0.5 for starting like one (the tiny SFT model rarely samples a whole warm
    /// answer, so the partial credit gives the first steps a signal; it cannot be gamed past the exact answer, which scores 1.5).
    /// </summary>
    internal static RewardFunction[] Rewards => [RewardFunction.Matches(WarmPattern).WithName("warm"), RewardFunction.Matches("^(Happy|Gladly)", weight: 0.5).WithName("warm_start")];

    internal static double IsWarm(string completion) => System.Text.RegularExpressions.Regex.IsMatch(completion, WarmPattern) ? 1 : 0;

    /// <summary>Mean reward of the greedy answers to the held-out prompts.</summary>
    internal static double HeldOutReward(LanguageModel model, out IReadOnlyList<string> answers)
    {
        var prompts = StylePreferenceTask.HeldOutSubjects.Select(StylePreferenceTask.Prompt).ToList();
        answers = model.CreateGenerator().Generate(prompts, new GenerationOptions { MaxNewTokens = 20 });
        return answers.Average(IsWarm);
    }

    static IDataView Prompts() => new MLContext().Data.LoadFromEnumerable(StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects));

    [TestMethod]
    public void GrpoRaisesTheHeldOutRewardOfTheSftModel()
    {
        double before = HeldOutReward(sft!.Model, out _);
        var lines = new List<string>();
        var ml = new MLContext(seed: 0);
        using var grpo = ml.Alignment().Trainers.Grpo(new GrpoTrainer.Options
        {
            BaseModel = sft.Model, Rewards = Rewards,
            NumGenerations = 8, MaxCompletionLength = 16, Temperature = 0.7, Epochs = 3, BatchSize = 4, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40,
            LoggingInterval = 2, Log = lines.Add,
        }).Fit(Prompts());
        double after = HeldOutReward(grpo.Model, out var answers);
        foreach (var line in lines) Console.WriteLine(line);
        Console.WriteLine($"held-out mean reward: SFT {before:F2} -> GRPO {after:F2}; answers: {string.Join(" | ", answers.Take(6))}");
        Assert.IsTrue(before <= 0.2, $"the SFT model should mostly answer curtly (reward {before})");
        Assert.IsTrue(after >= 0.9, $"held-out mean reward after GRPO {after}");
        Assert.IsFalse(grpo.HasReference, "β = 0: no reference model");
        var final = grpo.TrainingSummary!.FinalMetrics;
        foreach (var name in new[] { "reward", "reward_std", "rewards/warm/mean", "rewards/warm_start/std", "completions/mean_length", "completions/clipped_ratio", "entropy", "clip_ratio/region_mean", "frac_reward_zero_std" })
            Assert.IsTrue(final.ContainsKey(name), $"metric {name} is logged");
    }

    /// <summary>
    /// The rubric judge of the samples as an <c>IChatClient</c>: the library's rating request goes through
    /// <see cref="Feedback.ChatClientJudge"/> to a deterministic chat client that rates 9 for a warm answer, 5 for an answer that
    /// opens warmly ("Happy…", "Gladly…"), 3 for a curt one, 1 for anything else, and the rating is parsed back from its reply.
    /// </summary>
    internal static Microsoft.ML.Dpo.Feedback.ChatClientJudge RubricJudge(out Feedback.FakeChatClient client)
    {
        client = new Feedback.FakeChatClient(request =>
        {
            string answer = Feedback.FakeChatClient.AnswerOf(request).Trim();
            int rating = IsWarm(answer) == 1 ? 9 : answer.StartsWith("Happy", StringComparison.Ordinal) || answer.StartsWith("Gladly", StringComparison.Ordinal) ? 5
                : StylePreferenceTask.Curt.Contains(answer) ? 3 : 1;
            return $"Judged against the rubric.\nRating: {rating}";
        });
        return new Microsoft.ML.Dpo.Feedback.ChatClientJudge(client);
    }

    [TestMethod]
    public void OnlineDpoWithTheRubricChatJudgeReachesThePreferredStyle()
    {
        var judge = RubricJudge(out var client);
        var lines = new List<string>();
        var ml = new MLContext(seed: 0);
        using var online = ml.Alignment().Trainers.OnlineDpo(new OnlineDpoTrainer.Options
        {
            BaseModel = sft!.Model, Rewards = [RewardFunction.FromJudge(judge, "rubric")], Beta = 0.1,
            MaxCompletionLength = 16, Temperature = 0.7, Epochs = 6, BatchSize = 8, LearningRate = 5e-4, MaxLength = 64, MaxPromptLength = 40,
            LoggingInterval = 2, Log = lines.Add,
        }).Fit(Prompts());
        double after = HeldOutReward(online.Model, out var answers);
        foreach (var line in lines) Console.WriteLine(line);
        Console.WriteLine($"held-out preferred style: SFT 0 -> online DPO {after:F2} ({client.Calls} judge calls); answers: {string.Join(" | ", answers.Take(6))}");
        Assert.AreEqual(0, judge.Statistics.Unparsable);
        Assert.IsTrue(after >= 0.8, $"held-out preferred-style share after online DPO {after}");
        Assert.IsTrue(online.TrainingSummary!.FinalMetrics.ContainsKey("rewards/accuracies"), "the DPO step's metrics are logged");
        Assert.IsTrue(online.TrainingSummary.FinalMetrics.ContainsKey("pairs/tied_share"));
    }

    sealed class Progress(Action<Microsoft.ML.Dpo.Training.TrainingProgress> report) : IProgress<Microsoft.ML.Dpo.Training.TrainingProgress>
    {
        public void Report(Microsoft.ML.Dpo.Training.TrainingProgress value) => report(value);
    }

    [TestMethod]
    public void GrpoCancelledAndResumedEndsWithTheWeightsOfAnUninterruptedRun()
    {
        using var work = new TempDirectory();
        GrpoTrainer.Options Options(string checkpoints) => new()
        {
            BaseModel = sft!.Model, Rewards = Rewards, NumGenerations = 4, MaxCompletionLength = 8, Temperature = 0.7, Epochs = 1, BatchSize = 4, MaxSteps = 4,
            NumIterations = 2, LearningRate = 1e-3, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1, CheckpointDirectory = checkpoints,
        };
        static float[] Weights(LanguageModel model) => model.Network.parameters().SelectMany(p => p.detach().cpu().data<float>().ToArray()).ToArray();
        var ml = new MLContext(seed: 0);
        float[] uninterrupted;
        using (var full = ml.Alignment().Trainers.Grpo(Options(work.Combine("full"))).Fit(Prompts()))
            uninterrupted = Weights(full.Model);

        using var cancel = new CancellationTokenSource();
        var first = Options(work.Combine("resumed"));
        first.CancellationToken = cancel.Token;
        first.Progress = new Progress(p => { if (p.Step == 2) cancel.Cancel(); });   // after the first rollout batch's μ = 2 steps (a resume inside a batch resamples it)
        Assert.ThrowsExactly<OperationCanceledException>(() => ml.Alignment().Trainers.Grpo(first).Fit(Prompts()));
        var second = Options(work.Combine("resumed"));
        second.ExistingCheckpoint = Microsoft.ML.Dpo.Training.ExistingCheckpointAction.Resume;
        using var resumed = ml.Alignment().Trainers.Grpo(second).Fit(Prompts());
        Assert.AreEqual(4, resumed.TrainingSummary!.Steps);
        var weights = Weights(resumed.Model);
        double maxDiff = uninterrupted.Zip(weights, (a, b) => Math.Abs(a - b)).Max();
        Console.WriteLine($"max |Δ weight| resumed vs uninterrupted: {maxDiff:G3}");
        Assert.AreEqual(0.0, maxDiff, 1e-6);
    }

    [TestMethod]
    public void GrpoWithLoraUsesTheAdaptersOffAsItsReference()
    {
        var lines = new List<string>();
        var ml = new MLContext(seed: 0);
        using var grpo = ml.Alignment().Trainers.Grpo(new GrpoTrainer.Options
        {
            BaseModel = sft!.Model, Rewards = Rewards, Beta = 0.04, NumGenerations = 4, MaxCompletionLength = 8, Temperature = 0.7, BatchSize = 4, MaxSteps = 2,
            LearningRate = 1e-2, MaxLength = 64, MaxPromptLength = 40, LoggingInterval = 1, Log = lines.Add,
            Lora = new Microsoft.ML.Dpo.Lora.LoraOptions { Rank = 4, Alpha = 8 },
        }).Fit(Prompts());
        Assert.IsTrue(lines.Any(l => l.Contains("the policy with its LoRA adapters off")), string.Join("\n", lines));
        Assert.IsNotNull(grpo.Model.Lora);
        var final = grpo.TrainingSummary!.FinalMetrics;
        Assert.IsTrue(final["kl"] > 0, $"after a step the policy differs from the adapters-off reference: kl {final["kl"]}");
        // Only the adapters trained: with them off the network is the SFT model again.
        using (grpo.Model.Lora!.Disable())
        {
            var prompt = Microsoft.ML.Dpo.Tests.Trainers.StylePreferenceTask.Prompt("otters");
            Assert.AreEqual(sft.Model.CreateGenerator().Generate([prompt])[0], grpo.Model.CreateGenerator().Generate([prompt])[0]);
        }
    }

    [TestMethod]
    public void IterativeDpoRunsRoundsEachStartingFromTheLast()
    {
        var judge = RubricJudge(out var client);
        var lines = new List<string>();
        var prompts = StylePreferenceTask.TrainSubjects.Take(12).Select(StylePreferenceTask.Prompt).ToList();
        var models = IterativeDpo.Run(new MLContext(seed: 0), sft!.Model, prompts, judge, new IterativeDpoOptions
        {
            Rounds = 2, CompletionsPerPrompt = 4, Generation = new GenerationOptions { Temperature = 0.7, MaxNewTokens = 16 }, Log = lines.Add,
            Dpo = new DpoTrainer.Options { Beta = 0.1, Epochs = 2, BatchSize = 4, LearningRate = 5e-4, MaxLength = 64, MaxPromptLength = 40 },
        });
        try
        {
            foreach (var line in lines) Console.WriteLine(line);
            Assert.HasCount(2, models);
            Assert.AreEqual(2 * 12 * 4, client.Calls, "every round judges its own fresh samples");
            Assert.IsTrue(lines.All(l => l.Contains(" pairs from 12 prompts")));
            Assert.IsTrue(models.All(m => m.HasReference), "each round's reference is the model it started from");
        }
        finally
        {
            foreach (var m in models) m.Dispose();
        }
    }
}
