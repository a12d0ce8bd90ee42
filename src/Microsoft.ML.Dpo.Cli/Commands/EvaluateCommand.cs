using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Trainers;

namespace MlDpo.Commands;

/// <summary><c>mldpo evaluate</c>: DPO implicit-reward preference accuracy of a model against a reference, as one JSON line.</summary>
internal static class EvaluateCommand
{
    public static Command Create()
    {
        var model = Cli.Required("--model", "The trained model (Hugging Face directory with tokenizer files).");
        var reference = Cli.Required("--reference", "The reference model, typically the one DPO started from (same vocabulary).");
        var data = Cli.Required("--data", "Preference pairs: JSON Lines, JSON or Parquet, in any preference layout.");
        var beta = Cli.Option("--beta", "β of the implicit reward β·(log π − log π_ref).", 0.1);
        var batchSize = Cli.Option("--batch-size", "Pairs per forward pass.", 8);
        var skip = Cli.Option("--skip-invalid", "Skip malformed records (counted on stderr) instead of failing.", false);
        var dataFiles = new DataFlags();
        var command = new Command("evaluate", "Score preference pairs with the implicit reward β·(log π(y|x) − log π_ref(y|x)) and print one JSON line: " +
            "pairs, preference_accuracy (share of pairs whose chosen reward beats the rejected one), mean_margin, mean_chosen_reward, mean_rejected_reward, truncated.")
        {
            model, reference, data, beta, batchSize, skip,
        };
        dataFiles.AddPreference(command);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, stderr) = Cli.Writers(result);
            string dataPath = result.GetValue(data)!;
            if (!File.Exists(dataPath)) throw new CliException($"Data file '{dataPath}' does not exist.");
            var loadReport = new DataLoadReport();
            var pairs = PreferenceDataFile.ReadPreferencePairs(dataPath,
                dataFiles.Apply(result, new PreferenceDataLoadOptions { SkipMalformedRows = result.GetValue(skip), CancellationToken = cancellation, Log = stderr.WriteLine }), loadReport);
            if (loadReport.RowsSkipped > 0) stderr.WriteLine($"Data: {loadReport}");
            using var policy = LanguageModel.Load(result.GetValue(model)!);
            using var referenceModel = LanguageModel.Load(result.GetValue(reference)!);
            double b = result.GetValue(beta);
            var e = PreferenceEvaluator.Evaluate(policy, referenceModel, pairs, b, result.GetValue(batchSize), cancellation);
            static JsonNode? Number(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;
            var json = new JsonObject
            {
                ["pairs"] = e.Pairs,
                ["preference_accuracy"] = Number(e.PreferenceAccuracy),
                ["mean_margin"] = Number(e.MeanMargin),
                ["mean_chosen_reward"] = Number(e.MeanChosenReward),
                ["mean_rejected_reward"] = Number(e.MeanRejectedReward),
                ["beta"] = b,
                ["truncated"] = e.Truncated,
            };
            stdout.WriteLine(json.ToJsonString());
            return 0;
        });
        return command;
    }
}
