using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Samples;
using MlDpo.Commands;

namespace Microsoft.ML.Dpo.Tests.Cli;

/// <summary>
/// The default recipe, end to end through the command line as a new user runs it — <c>mldpo init</c>, then <c>mldpo sft</c> and
/// <c>mldpo dpo</c> with only <c>--model --data --output --epochs --seed</c> — on three of the style tasks
/// (<see cref="StyleTask"/>): polite and signoff with <c>mldpo init</c>'s default GPT-2 vocabulary, concise with the byte-level
/// tokenizer. The DPO model must answer held-out prompts (unseen subjects and phrasings) in the preferred style at least 80 % of
/// the time, with no degenerate answer, starting from an SFT model that does not. These are runs of the README's recipe table
/// (seed 1, 3 DPO epochs), where they gave 90 %, 93 % and 95 %; the table also lists the runs that stayed below 80 %.
/// </summary>
[TestClass]
public sealed class CliDefaultRecipeTests
{
    static (int Code, string Out, string Error) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = CliApp.Run(args, output, error);
        Console.WriteLine($"mldpo {string.Join(' ', args)} -> {code}\n{string.Join('\n', output.ToString().Split('\n').Where(l => !l.StartsWith("step ", StringComparison.Ordinal)))}{error}");
        return (code, output.ToString(), error.ToString());
    }

    /// <summary>The held-out greedy answers of the model in <paramref name="directory"/>.</summary>
    static IReadOnlyList<string> Answers(StyleTask task, string directory)
    {
        using var model = LanguageModel.Load(directory);
        return model.CreateGenerator().Generate(task.HeldOutPrompts(), new GenerationOptions { MaxNewTokens = TokenizerOf(task) == "bytes" ? 160 : 48 });
    }

    static readonly Dictionary<string, TempDirectory> folders = [];

    /// <summary>The tokenizer each task's model is created with (<c>mldpo init --tokenizer</c>).</summary>
    static string TokenizerOf(StyleTask task) => task == StyleTask.Concise ? "bytes" : "gpt2";

    [ClassCleanup]
    public static void Cleanup()
    {
        foreach (var folder in folders.Values) folder.Dispose();
    }

    /// <summary>The folder of <paramref name="task"/>'s runs, its SFT model trained once for the class (by <see cref="TrainSft"/>).</summary>
    static (TempDirectory Dir, string Sft) Prepared(StyleTask task)
    {
        lock (folders)
        {
            if (!folders.TryGetValue(task.Name, out var dir))
            {
                dir = new TempDirectory();
                TrainSft(dir, task);
                folders[task.Name] = dir;
            }
            return (dir, dir.Combine("sft"));
        }
    }

    /// <summary>init + sft with defaults, after which the SFT model must answer in the dispreferred style.</summary>
    static void TrainSft(TempDirectory dir, StyleTask task)
    {
        task.WriteSftData(dir.Combine("sft.jsonl"));
        task.WritePairs(dir.Combine("pairs.jsonl"));
        // Seed 1 throughout: the runs of the README's recipe table (samples/RecipeExperiment --seed 1), whose numbers these reproduce.
        Assert.AreEqual(0, Run("init", "--preset", "tiny", "--tokenizer", TokenizerOf(task), "--seed", "1", "--output", dir.Combine("base")).Code);
        var sft = Run("sft", "--model", dir.Combine("base"), "--data", dir.Combine("sft.jsonl"), "--output", dir.Combine("sft"), "--epochs", "10", "--seed", "1");
        Assert.AreEqual(0, sft.Code, sft.Error);
        StringAssert.Contains(sft.Out, "Learning rate 0.003 (automatic: the model was trained from scratch");
        var (preferred, dispreferred, _) = task.Score(Answers(task, dir.Combine("sft")));
        Console.WriteLine($"{task.Name} SFT: preferred {preferred:P0}, dispreferred {dispreferred:P0}");
        Assert.IsTrue(preferred <= 0.2, $"the SFT model should not yet answer in the preferred style: preferred {preferred:P0}, dispreferred {dispreferred:P0}");
    }

    /// <summary>dpo from <paramref name="sft"/> with the defaults plus <paramref name="extra"/>; asserts the preferred style on held-out prompts.</summary>
    static string AlignAndCheck(TempDirectory dir, StyleTask task, string sft, string output, params string[] extra)
    {
        var dpo = Run(["dpo", "--model", sft, "--data", dir.Combine("pairs.jsonl"), "--output", dir.Combine(output), "--epochs", "3", "--seed", "1", .. extra]);
        Assert.AreEqual(0, dpo.Code, dpo.Error);
        var answers = Answers(task, dir.Combine(output));
        var (preferred, _, degenerate) = task.Score(answers);
        Console.WriteLine($"{task.Name} DPO {string.Join(' ', extra)}: preferred {preferred:P0}, degenerate {degenerate}; e.g. {string.Join(" | ", answers.Take(4))}");
        Assert.IsTrue(preferred >= 0.8, $"{task.Name}: {preferred:P0} of held-out answers in the preferred style: {string.Join(" | ", answers)}");
        Assert.AreEqual(0, degenerate, $"{task.Name}: degenerate answers: {string.Join(" | ", answers.Where(task.IsDegenerate))}");
        Assert.IsFalse(dpo.Out.Contains("Likelihood displacement", StringComparison.Ordinal), "the default recipe does not displace the chosen answers");
        return dpo.Out;
    }

    [TestMethod]
    public void DefaultsTurnCurtAnswersPolite()
    {
        var task = StyleTask.Polite;
        var (dir, sft) = Prepared(task);
        string log = AlignAndCheck(dir, task, sft, "dpo");
        StringAssert.Contains(log, "Learning rate 0.003 (automatic");
        StringAssert.Contains(log, "plus the NLL of the chosen answers at weight 1 (RPO, the default");
        StringAssert.Contains(log, "β 0.3 (automatic");
        StringAssert.Contains(log, "Warm-up: the first 10% of the steps (automatic");
    }

    [TestMethod]
    public void DefaultsMakeVerboseAnswersConcise()
    {
        var task = StyleTask.Concise;
        var (dir, sft) = Prepared(task);
        AlignAndCheck(dir, task, sft, "dpo");
    }

    [TestMethod]
    public void DefaultsAndRpoAlphaOneAddTheSignOff()
    {
        // The task the earlier defaults (β 0.1, no warm-up) failed: 62 %, 23 answers repeating the sign-off.
        var task = StyleTask.SignOff;
        var (dir, sft) = Prepared(task);
        AlignAndCheck(dir, task, sft, "dpo");
        string log = AlignAndCheck(dir, task, sft, "dpo-rpo", "--rpo-alpha", "1");
        Assert.IsFalse(log.Contains("(RPO, the default", StringComparison.Ordinal), "an explicit --rpo-alpha is not reported as the default");
    }

    [TestMethod]
    public void PlainDpoBuiltToDisplaceIsWarnedAbout()
    {
        // Plain sigmoid DPO (--rpo-alpha 0) at the from-scratch learning rate with a small β lowers the chosen answers'
        // likelihood too: the guard rail says so on the command line, naming the remedy.
        var (dir, sft) = Prepared(StyleTask.Polite);
        var dpo = Run("dpo", "--model", sft, "--data", dir.Combine("pairs.jsonl"), "--output", dir.Combine("plain"), "--epochs", "3", "--seed", "1",
            "--rpo-alpha", "0", "--beta", "0.05", "--logging-steps", "3");
        Assert.AreEqual(0, dpo.Code, dpo.Error);
        var warnings = dpo.Out.Split('\n').Where(l => l.Contains("Likelihood displacement", StringComparison.Ordinal)).ToList();
        Assert.HasCount(1, warnings, dpo.Out);
        StringAssert.StartsWith(warnings[0].TrimStart(), "warning: ");
        StringAssert.Contains(warnings[0], "--rpo-alpha");
    }
}
