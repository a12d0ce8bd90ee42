using System.CommandLine;
using System.Globalization;
using Microsoft.ML.Dpo.Data;

namespace MlDpo.Commands;

/// <summary><c>mldpo binarize</c>: turn prompts with scored completions (UltraFeedback) into preference pairs (JSON Lines).</summary>
internal static class BinarizeCommand
{
    public static Command Create()
    {
        var data = Cli.Required("--data", "Prompts with scored completions (UltraFeedback layout): JSON Lines, JSON or Parquet.");
        var output = Cli.Required("--output", "The pairs file to write: JSON Lines with prompt, chosen, rejected.");
        var strategy = Cli.Choice("--strategy", "best-vs-random (Zephyr), best-vs-worst, or all-pairs.", "best-vs-random", "best-vs-random", "best-vs-worst", "all-pairs");
        var score = Cli.Choice("--score", "overall (the overall score) or mean-of-ratings (mean of the per-aspect ratings, as Notus).", "overall", "overall", "mean-of-ratings");
        var minMargin = Cli.Option("--min-margin", "all-pairs: the least score difference that makes a pair.", 0.0);
        var seed = Cli.Option("--seed", "Seed of best-vs-random's draws.", 42);
        var skip = Cli.Option("--skip-invalid", "Skip malformed records (counted) instead of failing.", false);
        var dataFiles = new DataFlags();
        var command = new Command("binarize", "Binarize prompts with several scored completions into (prompt, chosen, rejected) pairs and print what was dropped.")
        {
            data, output, strategy, score, minMargin, seed, skip, dataFiles.Format, dataFiles.Prompt,
        };
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, _) = Cli.Writers(result);
            string dataPath = result.GetValue(data)!, outputPath = result.GetValue(output)!;
            if (!File.Exists(dataPath)) throw new CliException($"Data file '{dataPath}' does not exist.");
            var loadReport = new DataLoadReport();
            var prompts = PreferenceDataFile.ReadScoredPrompts(dataPath, new PreferenceDataLoadOptions
            {
                SkipMalformedRows = result.GetValue(skip), Format = dataFiles.FormatOf(result), PromptColumnName = result.GetValue(dataFiles.Prompt)!,
                CancellationToken = cancellation, Log = stdout.WriteLine,
            }, loadReport);
            var options = new BinarizationOptions
            {
                Strategy = result.GetValue(strategy) switch
                {
                    "best-vs-worst" => BinarizationStrategy.BestVsWorst, "all-pairs" => BinarizationStrategy.AllPairs, _ => BinarizationStrategy.BestVsRandom,
                },
                Score = result.GetValue(score) == "mean-of-ratings" ? ScoreSource.MeanOfAspectRatings : ScoreSource.OverallScore,
                MinimumMargin = result.GetValue(minMargin),
                Seed = result.GetValue(seed),
            };
            var report = new BinarizationReport();
            var pairs = PreferenceBinarizer.Binarize(prompts, options, report);
            long written = PreferenceDataFile.WritePreferencePairs(outputPath, pairs);
            if (loadReport.RowsSkipped > 0) stdout.WriteLine($"Data: {loadReport}");
            stdout.WriteLine($"Binarization: {report}");
            foreach (var unpaired in report.UnpairedPrompts.Take(5))
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  no pair: record {unpaired.Row} ({unpaired.UsableCompletions} usable completions)"));
            if (report.PromptsWithoutPreference > 5) stdout.WriteLine($"  ... and {report.PromptsWithoutPreference - 5} more");
            stdout.WriteLine($"{written} pairs written to {outputPath}");
            return 0;
        });
        return command;
    }
}
