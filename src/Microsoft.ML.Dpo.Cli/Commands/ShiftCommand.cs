using System.CommandLine;
using System.Text.Json;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Analysis;

namespace MlDpo.Commands;

/// <summary><c>mldpo shift</c>: the token distribution shift of an aligned model from its base (URIAL's analysis).</summary>
internal static class ShiftCommand
{
    public static Command Create()
    {
        var baseModel = Cli.Required("--base", "The base model (Hugging Face directory).");
        var aligned = Cli.Required("--aligned", "The aligned model (same vocabulary); it answers every prompt greedily.");
        var data = Cli.Required("--data", "JSON Lines with a \"prompt\" string on every line (other fields, such as chosen/rejected, are ignored).");
        var maxNew = Cli.Option("--max-new-tokens", "The longest aligned answer, in tokens.", new TokenShiftOptions().MaxNewTokens);
        var batch = Cli.Option("--batch-size", "Prompts generated and scored together.", new TokenShiftOptions().BatchSize);
        var output = Cli.Option("--output", "The JSON report; NAME.html (answers with shifted tokens highlighted) and NAME.png (shares by position) are written beside it.", "shift-report.json");
        var command = new Command("shift", "Token distribution shift (Lin et al., 2023): rank each token of the aligned model's greedy answers in the base model's " +
            "distribution — unshifted (top-1), marginal (2nd/3rd), shifted — and print the summary as one JSON line (keys unshifted, marginal, shifted: shares).")
        {
            baseModel, aligned, data, maxNew, batch, output,
        };
        Cli.SetAction(command, (result, cancellation) =>
        {
            var (stdout, stderr) = Cli.Writers(result);
            string dataPath = result.GetValue(data)!, outputPath = result.GetValue(output)!;
            if (!File.Exists(dataPath)) throw new CliException($"Data file '{dataPath}' does not exist.");
            foreach (string written in new[] { outputPath, Path.ChangeExtension(outputPath, ".html"), Path.ChangeExtension(outputPath, ".png") })
                if (string.Equals(Path.GetFullPath(written), Path.GetFullPath(dataPath), StringComparison.Ordinal))
                    throw new CliException($"--output would overwrite --data '{dataPath}'; choose another report name.");
            var prompts = ReadPrompts(dataPath);
            using var b = LanguageModel.Load(result.GetValue(baseModel)!);
            using var a = LanguageModel.Load(result.GetValue(aligned)!);
            var options = new TokenShiftOptions
            {
                MaxNewTokens = result.GetValue(maxNew), BatchSize = result.GetValue(batch), CancellationToken = cancellation,
                Progress = new Progress(stderr),
            };
            var report = TokenShiftAnalysis.Analyze(b, a, prompts, options);
            ShiftReportFiles.Write(report, outputPath, $"{Path.GetFileName(Path.TrimEndingDirectorySeparator(result.GetValue(aligned)!))} vs {Path.GetFileName(Path.TrimEndingDirectorySeparator(result.GetValue(baseModel)!))}");
            stdout.WriteLine(report.SummaryJson());
            return 0;
        });
        return command;
    }

    /// <summary>The "prompt" of every line of a JSON Lines file; a bad line fails with its 1-based number.</summary>
    internal static List<string> ReadPrompts(string path)
    {
        var prompts = new List<string>();
        int line = 0;
        foreach (string text in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(text)) continue;
            try
            {
                using var doc = JsonDocument.Parse(text);
                if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("prompt", out var p) || p.ValueKind != JsonValueKind.String)
                    throw new CliException($"{path}: line {line}: field \"prompt\" (a string) is missing.");
                if (p.GetString()!.Length == 0) throw new CliException($"{path}: line {line}: field \"prompt\" is empty.");
                prompts.Add(p.GetString()!);
            }
            catch (JsonException e)
            {
                throw new CliException($"{path}: line {line}: not valid JSON ({e.Message.ReplaceLineEndings(" ")}).");
            }
        }
        if (prompts.Count == 0) throw new CliException($"{path}: no prompts.");
        return prompts;
    }

    sealed class Progress(TextWriter error) : IProgress<TokenShiftProgress>
    {
        string last = "";

        public void Report(TokenShiftProgress value)
        {
            string line = $"{value.Phase}: {value.Done}/{value.Total} answers ({value.Tokens} tokens)";
            if (line == last || (value.Phase == "generate" && value.Done < value.Total && value.Tokens % 256 != 0)) return;
            last = line;
            lock (error) error.WriteLine(line);
        }
    }
}
