using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Analysis;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Feedback;
using Microsoft.ML.Dpo.Generation;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Samples;
using Microsoft.ML.Dpo.Tokenization;
using Microsoft.ML.Dpo.Training;
using Microsoft.ML.Dpo.Trainers;
using MlDpo.Commands;
using Spectre.Console;

namespace DistilledDpo;

/// <summary>What the distilled-DPO run measured.</summary>
/// <param name="PairsFromFeedback">Preference pairs the judge and the binarizer produced from the sampled completions.</param>
/// <param name="Binarization">What the binarizer dropped and why.</param>
/// <param name="DpoWinRateOverSft">Judged win rate of the dDPO model's greedy answers over the dSFT model's, held-out prompts.</param>
/// <param name="UrialWinRateOverSft">The same for URIAL (the base model prompted in context), the baseline to beat.</param>
/// <param name="SftPreferredStyleRate">Share of dSFT answers that are exactly a preferred answer.</param>
/// <param name="DpoPreferredStyleRate">Share of dDPO answers that are exactly a preferred answer.</param>
/// <param name="UrialPreferredStyleRate">Share of URIAL answers that are exactly a preferred answer.</param>
/// <param name="DpoShiftFromSft">Shares of the dDPO answers' tokens unshifted/marginal/shifted under the dSFT model (<see cref="TokenShiftAnalysis"/>).</param>
/// <param name="UrialShiftFromBase">The same for URIAL's answers under the base model without the in-context prompt (random base: URIAL's premise does not hold).</param>
/// <param name="JudgeBudget">Judge calls of every arm of the comparison: the offline arm's rating calls.</param>
/// <param name="Comparison">The equal-judge-budget comparison (<see cref="JudgeBudgetComparison"/>): dSFT, offline DPO, then the online arms run; empty when none ran.</param>
public sealed record DistilledDpoSummary(int PairsFromFeedback, string Binarization, double DpoWinRateOverSft, double UrialWinRateOverSft,
    double SftPreferredStyleRate, double DpoPreferredStyleRate, double UrialPreferredStyleRate,
    TokenShiftShares? DpoShiftFromSft = null, TokenShiftShares? UrialShiftFromBase = null, long JudgeBudget = 0, IReadOnlyList<ComparisonArm>? Comparison = null);

/// <summary>The distilled DPO recipe (Tunstall et al., 2023) end to end.</summary>
public static class DistilledDpoApp
{
    /// <summary>The online arms of the comparison, as <c>--compare</c> names them.</summary>
    public static readonly string[] OnlineArms = ["online-dpo", "rloo", "grpo"];

    /// <summary>Parses <c>--output</c>, <c>--completions</c>, <c>--seed</c>, <c>--compare</c>, <c>--no-compare</c> and runs; returns the exit code.</summary>
    public static int Run(string[] args)
    {
        string output = "distilled-dpo-output";
        int k = 8, seed = 42;
        IReadOnlyCollection<string> arms = OnlineArms;
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--output": output = Value(); break;
                case "--completions": k = int.Parse(Value()); break;
                case "--seed": seed = int.Parse(Value()); break;
                case "--compare": arms = Value().Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries); break;
                case "--no-compare": arms = []; break;
                default:
                    Console.Error.WriteLine($"Unknown argument '{args[i]}'. Use --output DIR, --completions K, --seed S, --compare {string.Join(",", OnlineArms)} (a subset), --no-compare.");
                    return 2;
            }
        }
        if (arms.FirstOrDefault(a => !OnlineArms.Contains(a)) is { } unknown)
        {
            Console.Error.WriteLine($"--compare: unknown arm '{unknown}'; arms: {string.Join(", ", OnlineArms)}.");
            return 2;
        }
        Run(output, k, seed, arms);
        return 0;
    }

    /// <summary>
    /// Runs the recipe, writing models and summary.json under <paramref name="output"/>; then, for each arm of
    /// <paramref name="compareWith"/> ("online-dpo", "rloo", "grpo"), trains it from the dSFT model with the offline arm's
    /// judge budget and compares all arms side by side (<see cref="JudgeBudgetComparison"/>).
    /// </summary>
    public static DistilledDpoSummary Run(string output, int completionsPerPrompt, int seed, IReadOnlyCollection<string>? compareWith = null)
    {
        compareWith ??= [];
        output = Path.GetFullPath(output);
        Directory.CreateDirectory(output);
        var ml = new MLContext(seed: seed);
        var display = new TrainingDisplay(Console.Out, progressBar: !Console.IsOutputRedirected);
        using var baseModel = ModelPresets.CreateModel("llama", "small", TextTokenizer.CreateByteLevel(Path.Combine(output, "tokenizer")), seed);

        // 1. dSFT on imperfect demonstrations (both styles, mostly curt).
        using var sft = display.Run("dSFT", () => ml.Alignment().Trainers.Sft(new SftTrainer.Options
        {
            BaseModel = baseModel, Epochs = 20, BatchSize = 8, LearningRate = 3e-3, WarmupSteps = 5, MaxLength = 128, MaxPromptLength = 96,
            Seed = seed, LoggingInterval = 5, Progress = display.Progress, Log = display.Log,
        }).Fit(ml.Data.LoadFromCompletions(DemoTask.SftExamples())));

        // 2. Sample k completions per training prompt from the dSFT model (the offline arm's clock starts here).
        var offlineClock = System.Diagnostics.Stopwatch.StartNew();
        var prompts = DemoTask.TrainPairs().Select(p => p.Prompt).Distinct().ToList();
        var candidates = CompletionRanker.SampleCompletions(sft.Model, prompts, completionsPerPrompt,
            new GenerationOptions { Temperature = 1.0, MaxNewTokens = 32, StopStrings = ["\n"], Seed = seed });

        // 3. AI feedback: a teacher rates every completion through the LLM-judge path (IChatClient → rating prompt → parsed
        //    rating), UltraFeedback's role; 4. binarize best vs random (Zephyr).
        using var teacher = new RubricTeacher();
        var judge = new ChatClientJudge(teacher);
        var ranking = new RankingReport();
        var scored = CompletionRanker.RankAsync(judge, candidates, report: ranking).GetAwaiter().GetResult();
        var binarization = new BinarizationReport();
        var pairs = PreferenceBinarizer.Binarize(scored, new BinarizationOptions { Strategy = BinarizationStrategy.BestVsRandom, Seed = seed }, binarization);
        long budget = teacher.Calls;   // the offline arm's judge calls: every arm of the comparison gets as many
        AnsiConsole.MarkupLine($"[bold]AI feedback[/]: {Markup.Escape(ranking.ToString() ?? "")}; judge: {Markup.Escape(judge.Statistics.ToString() ?? "")}; binarized into {pairs.Count} pairs ({Markup.Escape(Describe(binarization))})");
        if (pairs.Count == 0) throw new InvalidOperationException("The judge found no preference among the sampled completions: sample more (--completions).");

        // 5. dDPO against the dSFT model, with the library's default recipe (learning rate by the model's origin, sigmoid + RPO's
        //    NLL term on the chosen answers). Plain DPO at lr 1e-4 (Zephyr's loss) won on one seed and lost on two of three others:
        //    the README's table.
        using var dpo = display.Run("dDPO", () => ml.Alignment().Trainers.Dpo(new DpoTrainer.Options
        {
            BaseModel = sft.Model, Epochs = 6, BatchSize = 8, MaxLength = 128, MaxPromptLength = 96,
            Seed = seed, LoggingInterval = 2, CheckpointDirectory = Path.Combine(output, "ddpo-run"), ExistingCheckpoint = ExistingCheckpointAction.Restart, Progress = display.Progress, Log = display.Log,
        }).Fit(ml.Data.LoadFromPreferencePairs(pairs)));
        double offlineSeconds = offlineClock.Elapsed.TotalSeconds;

        // 6. Held-out comparison: dDPO and URIAL (base model, in-context alignment) against dSFT, by the same judge.
        // The evaluations use a teacher of their own, so that the arms' counts are their training's calls only.
        using var evaluationTeacher = new RubricTeacher();
        var evaluator = new ChatClientJudge(evaluationTeacher);
        var heldOut = DemoTask.HeldOutPrompts;
        var greedy = new GenerationOptions { MaxNewTokens = 32, StopStrings = ["\n"] };
        var sftAnswers = sft.Model.CreateGenerator().Generate(heldOut, greedy);
        var dpoAnswers = dpo.Model.CreateGenerator().Generate(heldOut, greedy);
        // URIAL's three stylistic examples, kept short: byte-level prompts must fit the 512-token context.
        var urial = new UrialPromptBuilder
        {
            SystemPrompt = "A helpful, warm assistant answers.",
            Examples = DemoTask.TrainPairs().Take(3).Select(p => new UrialExample(p.Prompt.Trim(), p.Chosen)).ToList(),
        };
        var urialAnswers = heldOut.Select(p => urial.Generate(baseModel, p.Trim(), greedy).Trim()).ToList();
        static double Style(IEnumerable<string> answers) => answers.Average(a => DemoTask.IsPreferredStyle(a) ? 1.0 : 0.0);

        // 7. What alignment changed, token by token (Lin et al., 2023): dDPO's greedy answers ranked under dSFT, and URIAL's under
        //    the base model without the in-context prompt. The base has random weights here, so URIAL's premise does not hold.
        var shiftOptions = new TokenShiftOptions { MaxNewTokens = 32 };
        var dpoShift = TokenShiftAnalysis.Analyze(sft.Model, dpo.Model, heldOut, shiftOptions);
        var urialShift = TokenShiftAnalysis.Analyze(baseModel, baseModel, heldOut.Select(p => p.Trim()).ToList(),
            new TokenShiftOptions { MaxNewTokens = 32, AlignedPromptFormat = urial.Build });
        ShiftReportFiles.Write(dpoShift, Path.Combine(output, "shift", "ddpo-vs-dsft.json"), "dDPO vs dSFT");
        ShiftReportFiles.Write(urialShift, Path.Combine(output, "shift", "urial-vs-base.json"), "URIAL vs base");

        var summary = new DistilledDpoSummary(pairs.Count, Describe(binarization),
            Judges.WinRate(evaluator, heldOut, dpoAnswers, sftAnswers), Judges.WinRate(evaluator, heldOut, urialAnswers, sftAnswers),
            Style(sftAnswers), Style(dpoAnswers), Style(urialAnswers), dpoShift.Overall, urialShift.Overall);
        var table = new Table().AddColumns("held-out prompt", "dSFT", "dDPO", "URIAL (base model)");
        foreach (int i in new[] { 0, heldOut.Count / 2, heldOut.Count - 1 })
            table.AddRow(Markup.Escape(heldOut[i].Trim()), Markup.Escape(sftAnswers[i]), Markup.Escape(dpoAnswers[i]), Markup.Escape(urialAnswers[i]));
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"[bold]Judged win rate over dSFT[/] on {heldOut.Count} held-out prompts: dDPO {summary.DpoWinRateOverSft:P0}, URIAL {summary.UrialWinRateOverSft:P0}");
        AnsiConsole.MarkupLine($"[bold]Answers in the preferred style[/]: dSFT {summary.SftPreferredStyleRate:P0}, dDPO {summary.DpoPreferredStyleRate:P0}, URIAL {summary.UrialPreferredStyleRate:P0}");
        AnsiConsole.MarkupLine($"[bold]Token distribution shift[/] (shifted / marginal): dDPO vs dSFT {dpoShift.Shifted:P1} / {dpoShift.Marginal:P1}, " +
                               $"URIAL vs base {urialShift.Shifted:P1} / {urialShift.Marginal:P1} (random base: URIAL's premise does not hold); reports in {Markup.Escape(Path.Combine(output, "shift"))}");

        // 8. The equal-judge-budget comparison: offline DPO against online DPO, RLOO and GRPO, each online arm started from dSFT and
        //    stopped after the offline arm's number of judge calls.
        if (compareWith.Count > 0)
        {
            var arms = new List<ComparisonArm>
            {
                new("dSFT", 0, 0.5, summary.SftPreferredStyleRate, 0, 0, "the starting point of every arm"),
                new("offline DPO (dDPO)", budget, summary.DpoWinRateOverSft, summary.DpoPreferredStyleRate,
                    JudgeBudgetComparison.KlToSft(dpo.Model, sft.Model, heldOut, 32, seed), offlineSeconds,
                    $"{prompts.Count} prompts × {completionsPerPrompt} completions rated up front, {pairs.Count} pairs, 6 epochs of DPO"),
            };
            var online = JudgeBudgetComparison.TrainOnlineArms(ml, sft.Model, prompts, budget, compareWith, seed, display);
            try
            {
                foreach (var (name, model, calls, seconds, setup) in online)
                {
                    var answers = model.Model.CreateGenerator().Generate(heldOut, greedy);
                    arms.Add(new ComparisonArm(name, calls, Judges.WinRate(evaluator, heldOut, answers, sftAnswers), Style(answers),
                        JudgeBudgetComparison.KlToSft(model.Model, sft.Model, heldOut, 32, seed), seconds, setup));
                }
            }
            finally
            {
                foreach (var arm in online) arm.Model.Dispose();
            }
            summary = summary with { JudgeBudget = budget, Comparison = arms };
            string markdown = JudgeBudgetComparison.ToMarkdown(arms, budget, heldOut.Count);
            Console.WriteLine();
            Console.WriteLine(markdown);
            File.WriteAllText(Path.Combine(output, "comparison.md"), markdown);
        }
        File.WriteAllText(Path.Combine(output, "summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        return summary;
    }

    static string Describe(BinarizationReport r) =>
        $"{r.PromptsRead} prompts, {r.TiesDropped} ties dropped, {r.PromptsWithoutPreference} prompts without two distinct scores, {r.CompletionsWithoutScore} unscored, {r.EmptyCompletions} empty";
}
