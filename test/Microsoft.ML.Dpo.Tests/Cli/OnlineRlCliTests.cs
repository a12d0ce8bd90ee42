using System.Text.Json;
using Microsoft.ML.Dpo.Tests.Reinforcement;
using Microsoft.ML.Dpo.Tests.Trainers;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary><c>mldpo grpo</c> end to end with verifiable rewards written on the command line, and the reward options' errors.</summary>
[TestClass]
public sealed class OnlineRlCliTests
{
    static (int Code, string Out, string Error) Run(params string[] args) => CliRunner.Run(args);

    static void WritePrompts(string path, IEnumerable<string> subjects) =>
        File.WriteAllLines(path, subjects.Select(s => JsonSerializer.Serialize(new { prompt = StylePreferenceTask.Prompt(s) })));

    [TestMethod]
    public void GrpoThroughTheCliRaisesTheHeldOutRewardToNinetyPercent()
    {
        using var dir = new TempDirectory();
        string sftDir = dir.Combine("sft"), prompts = dir.Combine("prompts.jsonl"), output = dir.Combine("grpo");
        double before;
        using (var sft = StylePreferenceTask.TrainSft(dir.Combine("work")))
        {
            sft.ExportHuggingFace(sftDir);
            before = OnlineRlTrainingTests.HeldOutReward(sft.Model, out _);
        }
        WritePrompts(prompts, StylePreferenceTask.TrainSubjects);
        var run = Run("grpo", "--model", sftDir, "--data", prompts, "--output", output,
            "--reward-function", "regex:" + OnlineRlTrainingTests.WarmPattern, "--reward-function", "regex:^(Happy|Gladly)", "--reward-weights", "1,0.5",
            "--num-generations", "8", "--max-completion-length", "16", "--temperature", "0.7", "--epochs", "3", "--batch-size", "4",
            "--learning-rate", "1e-3", "--max-length", "64", "--max-prompt-length", "40", "--logging-steps", "4");
        Assert.AreEqual(0, run.Code, run.Error);
        StringAssert.Contains(run.Out, "rewards/regex_1/mean");
        StringAssert.Contains(run.Out, "Reference model: none");
        Assert.IsTrue(File.Exists(Path.Combine(output, "metrics.jsonl")));
        using var trained = LanguageModel.Load(output);
        double after = OnlineRlTrainingTests.HeldOutReward(trained, out var answers);
        Console.WriteLine($"held-out mean reward (exactly a warm answer): SFT {before:F2} -> mldpo grpo {after:F2}; {string.Join(" | ", answers.Take(5))}");
        Assert.IsTrue(before <= 0.2, $"SFT reward {before}");
        Assert.IsTrue(after >= 0.9, $"held-out mean reward after mldpo grpo: {after}");
    }

    [TestMethod]
    public void RlooWithARewardModelTrainedByMldpoRewardReachesTheWarmStyle()
    {
        using var dir = new TempDirectory();
        string sftDir = dir.Combine("sft"), pairs = dir.Combine("pairs.jsonl"), rewardDir = dir.Combine("rm"), output = dir.Combine("rloo");
        double before;
        var records = StylePreferenceTask.Pairs(StylePreferenceTask.TrainSubjects).ToList();
        using (var sft = StylePreferenceTask.TrainSft(dir.Combine("work")))
        {
            sft.ExportHuggingFace(sftDir);
            before = OnlineRlTrainingTests.HeldOutReward(sft.Model, out _);
            // RLHF's comparisons are made on the SFT policy's own samples: besides warm over curt, warm over what the SFT model
            // writes when sampled (often garbled at this size), so the reward model has seen the policy's distribution.
            var prompts = StylePreferenceTask.TrainSubjects.Select(StylePreferenceTask.Prompt).ToList();
            var samples = sft.Model.CreateGenerator().Generate(prompts, new Microsoft.ML.Dpo.Generation.GenerationOptions { Temperature = 1.0, MaxNewTokens = 16, Seed = 7 });
            for (int i = 0; i < prompts.Count; i++)
                if (OnlineRlTrainingTests.IsWarm(samples[i]) == 0 && samples[i].Length > 0)
                    records.Add(new StylePreferenceTask.Pair { prompt = prompts[i], chosen = StylePreferenceTask.Warm[i % 2], rejected = samples[i] });
        }
        File.WriteAllLines(pairs, records.Select(p => JsonSerializer.Serialize(p)));
        var reward = Run("reward", "--model", sftDir, "--data", pairs, "--output", rewardDir, "--epochs", "8", "--batch-size", "8",
            "--learning-rate", "1e-3", "--max-length", "64", "--max-prompt-length", "40");
        Assert.AreEqual(0, reward.Code, reward.Error);
        // The preference file serves as the prompt source (its chosen and rejected answers are ignored).
        var run = Run("rloo", "--model", sftDir, "--data", pairs, "--output", output, "--reward-model", rewardDir,
            "--num-generations", "8", "--max-completion-length", "16", "--temperature", "0.7", "--epochs", "3", "--batch-size", "4",
            "--learning-rate", "3e-4", "--beta", "0.05", "--max-length", "64", "--max-prompt-length", "40", "--logging-steps", "4");
        Assert.AreEqual(0, run.Code, run.Error);
        StringAssert.Contains(run.Out, "rewards/reward_model/mean");
        StringAssert.Contains(run.Out, "kl=");
        using var trained = LanguageModel.Load(output);
        double after = OnlineRlTrainingTests.HeldOutReward(trained, out var answers);
        Console.WriteLine($"held-out preferred style (exactly a warm answer): SFT {before:F2} -> mldpo rloo {after:F2}; {string.Join(" | ", answers.Take(5))}");
        Assert.IsTrue(after >= 0.8, $"held-out preferred-style share after mldpo rloo: {after}");
    }

    [TestMethod]
    public void OnlineDpoVerbTrainsAndWritesTheModel()
    {
        using var dir = new TempDirectory();
        string prompts = dir.Combine("prompts.jsonl");
        WritePrompts(prompts, StylePreferenceTask.TrainSubjects.Take(4));
        Assert.AreEqual(0, Run("init", "--arch", "llama", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        var run = Run("online-dpo", "--model", dir.Combine("base"), "--data", prompts, "--output", dir.Combine("out"), "--reward-function", "ends-with:.",
            "--max-completion-length", "8", "--batch-size", "4", "--max-steps", "2", "--logging-steps", "1", "--max-length", "64", "--max-prompt-length", "40");
        Assert.AreEqual(0, run.Code, run.Error);
        StringAssert.Contains(run.Out, "pairs/tied_share");
        StringAssert.Contains(run.Out, "Reference model: a frozen copy of the starting model.");
        Assert.IsTrue(File.Exists(Path.Combine(dir.Combine("out"), "config.json")));
    }

    [TestMethod]
    public void JudgeFlagPutsAnyJudgeOfEvaluateInTheLoopOfOnlineDpoRlooAndGrpo()
    {
        using var dir = new TempDirectory();
        string prompts = dir.Combine("prompts.jsonl"), judgeModel = dir.Combine("judge");
        WritePrompts(prompts, StylePreferenceTask.TrainSubjects.Take(4));
        Assert.AreEqual(0, Run("init", "--arch", "llama", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code);
        Assert.AreEqual(0, Run("init", "--arch", "llama", "--preset", "tiny", "--tokenizer", "bytes", "--seed", "3", "--output", judgeModel).Code);
        string[] Common(string verb, string? output = null) => [verb, "--model", dir.Combine("base"), "--data", prompts, "--output", output ?? dir.Combine(verb), "--max-completion-length", "8",
            "--batch-size", "4", "--max-steps", "1", "--logging-steps", "1", "--max-length", "64", "--max-prompt-length", "40"];

        // A regex judge as the only reward of online DPO; with a verifiable reward beside it in GRPO and RLOO (weights: functions, then the judge).
        var online = Run([.. Common("online-dpo"), "--judge", "regex:[a-z]"]);
        Assert.AreEqual(0, online.Code, online.Error);
        StringAssert.Contains(online.Out, "rewards/judge/mean");
        StringAssert.Contains(online.Out, "pairs/tied_share");
        foreach (string verb in new[] { "grpo", "rloo" })
        {
            var run = Run([.. Common(verb), "--num-generations", "2", "--reward-function", "ends-with:.", "--judge", "regex:[a-z]", "--reward-weights", "1,0.5"]);
            Assert.AreEqual(0, run.Code, verb + ": " + run.Error);
            StringAssert.Contains(run.Out, "rewards/judge/mean", verb);
            StringAssert.Contains(run.Out, "rewards/ends_with/mean", verb);
        }

        // The LLM-judge path (RLAIF from the shell): a local chat model rates every sampled answer through IChatClient. This random
        // model writes no readable rating, so every item is unscored and counted, and every pair ties; the point is that it is asked.
        var chat = Run([.. Common("online-dpo", dir.Combine("chat")), "--judge", "chat:" + judgeModel]);
        Assert.AreEqual(0, chat.Code, chat.Error);
        StringAssert.Contains(chat.Out, "rewards/judge/unscored=8", "4 prompts × 2 answers asked of the chat judge, none rated");
        StringAssert.Contains(chat.Out, "pairs/tied_share=1");

        // The judge's model is an input of the run: the output folder may not replace it.
        var clash = Run([.. Common("online-dpo", judgeModel), "--judge", "reward-model:" + judgeModel]);
        Assert.AreEqual(1, clash.Code);
        StringAssert.Contains(clash.Error, "an input of this run");
    }

    [TestMethod]
    public void RewardOptionsAreCheckedOnOneLine()
    {
        using var dir = new TempDirectory();
        string prompts = dir.Combine("prompts.jsonl");
        WritePrompts(prompts, ["apples", "rivers"]);
        Assert.IsTrue(Run("init", "--arch", "llama", "--preset", "tiny", "--tokenizer", "bytes", "--output", dir.Combine("base")).Code == 0);
        string[] common = ["grpo", "--model", dir.Combine("base"), "--data", prompts, "--output", dir.Combine("out")];
        (string[] Extra, string Message)[] cases =
        [
            ([], "Give a reward"),
            (["--reward-function", "starts-with:x"], "expected ends-with:TEXT or regex:PATTERN"),
            (["--reward-function", "regex:(["], "not a valid regular expression"),
            (["--reward-function", "ends-with:!", "--reward-weights", "1,2"], "--reward-weights has 2 value(s) for 1 reward(s)"),
            (["--reward-model", dir.Combine("base")], "is not a reward model written by mldpo reward"),
            (["--reward-function", "ends-with:!", "--num-generations", "1"], "NumGenerations must be at least 2"),
            (["--judge", "oracle:x"], "names no judge kind"),
            (["--judge", "chat:" + dir.Combine("missing")], "does not exist"),
            (["--judge", "regex:a", "--reward-function", "ends-with:!", "--reward-weights", "1"], "then one for --judge"),
        ];
        foreach (var (extra, message) in cases)
        {
            var run = Run([.. common, .. extra]);
            Assert.AreEqual(1, run.Code, string.Join(" ", extra));
            StringAssert.Contains(run.Error, message);
            Assert.AreEqual(1, run.Error.Trim().Split('\n').Length, "one line: " + run.Error);
        }
    }
}
