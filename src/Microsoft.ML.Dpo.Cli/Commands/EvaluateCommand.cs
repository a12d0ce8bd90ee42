using System.CommandLine;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Data;
using Microsoft.ML.Dpo.Trainers;

namespace MlDpo.Commands;

/// <summary>
/// <c>mldpo evaluate</c>: DPO implicit-reward preference accuracy of a model against a reference, and with <c>--generate</c>
/// evaluation by generation (win rate by a <c>--judge</c>, lengths, degeneration, side-by-side samples), as one JSON line.
/// </summary>
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
        var generate = Cli.Option("--generate", "Also answer the data's prompts with --model and --reference (greedy) and compare the answers: adds eval/win_rate " +
            "(with --judge; ties count 1/2), eval/mean_length, eval/reference_mean_length, eval/repeated_ngram_share, eval/degenerate_rate and side-by-side samples. " +
            "The data may then also be a completions, KTO or prompt-only file (only its prompts are used).", false);
        var maxNewTokens = Cli.Option("--max-new-tokens", "With --generate: new tokens per answer.", 64);
        var samples = Cli.Option("--samples", "With --generate: side-by-side samples in the output.", 3);
        var judge = new JudgeOptions();
        var dataFiles = new DataFlags();
        var command = new Command("evaluate", "Score preference pairs with the implicit reward β·(log π(y|x) − log π_ref(y|x)) and print one JSON line: " +
            "pairs, preference_accuracy (share of pairs whose chosen reward beats the rejected one), mean_margin, mean_chosen_reward, mean_rejected_reward, truncated; " +
            "with --generate, evaluation by generation too.")
        {
            model, reference, data, beta, batchSize, skip, generate, maxNewTokens, samples,
        };
        judge.AddTo(command);
        dataFiles.AddPreference(command);
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, stderr) = Cli.Writers(result);
            string dataPath = result.GetValue(data)!;
            if (!File.Exists(dataPath)) throw new CliException($"Data file '{dataPath}' does not exist.");
            bool generating = result.GetValue(generate);
            var loadReport = new DataLoadReport();
            List<PreferencePair>? pairs;
            try
            {
                pairs = PreferenceDataFile.ReadPreferencePairs(dataPath,
                    dataFiles.Apply(result, new PreferenceDataLoadOptions { SkipMalformedRows = result.GetValue(skip), CancellationToken = cancellation, Log = stderr.WriteLine }), loadReport);
            }
            catch (InvalidDataException e) when (generating && loadReport.PreferenceLayout is null)
            {
                pairs = null;   // a completions, KTO or prompt-only file: only its prompts are answered
                _ = e;
            }
            if (loadReport.RowsSkipped > 0) stderr.WriteLine($"Data: {loadReport}");
            var owned = new List<IDisposable>();
            try
            {
                var judgeModel = judge.Create(result, owned);
                if (judgeModel is not null && !generating) throw new CliException("--judge compares generated answers; give --generate too.");
                using var policy = LanguageModel.Load(result.GetValue(model)!);
                using var referenceModel = LanguageModel.Load(result.GetValue(reference)!);
                double b = result.GetValue(beta);
                static JsonNode? Number(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;
                var json = new JsonObject();
                if (pairs is not null)
                {
                    var e = PreferenceEvaluator.Evaluate(policy, referenceModel, pairs, b, result.GetValue(batchSize), cancellation);
                    json["pairs"] = e.Pairs;
                    json["preference_accuracy"] = Number(e.PreferenceAccuracy);
                    json["mean_margin"] = Number(e.MeanMargin);
                    json["mean_chosen_reward"] = Number(e.MeanChosenReward);
                    json["mean_rejected_reward"] = Number(e.MeanRejectedReward);
                    json["beta"] = b;
                    json["truncated"] = e.Truncated;
                }
                if (generating)
                {
                    var prompts = TrainCommands.Prompts(dataPath, chatTemplate: null);
                    var comparison = PreferenceEvaluator.EvaluateByGeneration(policy, referenceModel, prompts, judgeModel,
                        new Microsoft.ML.Dpo.Generation.GenerationOptions { MaxNewTokens = result.GetValue(maxNewTokens) }, cancellation);
                    json["prompts"] = prompts.Count;
                    foreach (var (name, value) in comparison.Metrics) json[name] = Number(value);
                    var side = new JsonArray();
                    for (int i = 0; i < Math.Min(Math.Max(0, result.GetValue(samples)), prompts.Count); i++)
                        side.Add(new JsonObject { ["prompt"] = prompts[i], ["model"] = comparison.Answers[i], ["reference"] = comparison.ReferenceAnswers[i] });
                    json["samples"] = side;
                }
                stdout.WriteLine(json.ToJsonString());
            }
            finally
            {
                foreach (var item in owned) item.Dispose();
            }
            return 0;
        });
        return command;
    }
}
