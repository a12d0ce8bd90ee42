using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Generation;

namespace MlDpo.Commands;

/// <summary><c>mldpo generate</c>: continue a prompt (text or token ids) with a model.</summary>
internal static class GenerateCommand
{
    public static Command Create()
    {
        var model = Cli.Required("--model", "A Hugging Face model directory or an llama2.c .bin file (which has no tokenizer: use --prompt-ids).");
        var prompt = Cli.Optional<string>("--prompt", "The prompt text (encoded with the model's tokenizer, BOS first when it has one).");
        var promptIds = Cli.Optional<string>("--prompt-ids", "The prompt as comma-separated token ids, e.g. 1,2,3 (used as given: no BOS is added).");
        var maxNew = Cli.Option("--max-new-tokens", "The most tokens to generate.", 128);
        var temperature = Cli.Option("--temperature", "Softmax temperature; 0 decodes greedily.", 0.0);
        var topK = Cli.Option("--top-k", "Sample among the K most likely tokens only (0: all).", 0);
        var topP = Cli.Option("--top-p", "Sample among the most likely tokens whose probabilities sum to P (1: all).", 1.0);
        var repetition = Cli.Option("--repetition-penalty", "Penalty for tokens already present (1: none).", 1.0);
        var seed = Cli.Option("--seed", "Seed of the sampler.", 0L);
        var ignoreEos = Cli.Option("--ignore-eos", "Keep generating past the model's end-of-sequence token (by default generation stops there and the EOS is not printed).", false);
        var format = Cli.Choice("--format", "text: the generated text (ids when the model has no tokenizer); ids: only the generated token ids, " +
            "comma-separated on one line; json: {\"prompt_ids\", \"generated_ids\", \"text\"}.", "text", "text", "ids", "json");
        var command = new Command("generate", "Generate a continuation of a prompt (greedy by default; the prompt is not repeated in the output).")
        {
            model, prompt, promptIds, maxNew, temperature, topK, topP, repetition, seed, ignoreEos, format,
        };
        command.Validators.Add(r =>
        {
            if ((r.GetResult(prompt) is null) == (r.GetResult(promptIds) is null))
                r.AddError("Give exactly one of --prompt and --prompt-ids.");
        });
        Cli.SetAction(command, (result, _) =>
        {
            var (stdout, stderr) = Cli.Writers(result);
            string path = result.GetValue(model)!;
            if (!File.Exists(path) && !Directory.Exists(path)) throw new CliException($"Model '{path}' does not exist.");
            string? text = result.GetValue(prompt);
            if (text is not null && File.Exists(path))
                throw new CliException($"'{path}' is an llama2.c checkpoint, which has no tokenizer: --prompt needs one. Pass token ids with --prompt-ids (e.g. --prompt-ids 1 for BOS).");
            using var lm = LanguageModel.Load(path);
            int[] ids;
            if (text is not null)
            {
                var tokenizer = lm.Tokenizer ?? throw new CliException($"Model '{path}' has no tokenizer files: --prompt needs them. Pass token ids with --prompt-ids.");
                ids = tokenizer.EncodePrompt(text).ToArray();
            }
            else ids = ParseIds(result.GetValue(promptIds)!, lm.Network.Config.VocabSize);

            var options = new GenerationOptions
            {
                MaxNewTokens = result.GetValue(maxNew), Temperature = result.GetValue(temperature), TopK = result.GetValue(topK),
                TopP = result.GetValue(topP), RepetitionPenalty = result.GetValue(repetition), Seed = result.GetValue(seed),
                StopAtEos = !result.GetValue(ignoreEos),
            };
            int context = lm.Network.Config.MaxPositionEmbeddings, room = context - ids.Length;
            if (room > 0 && options.MaxNewTokens > room)
                stderr.WriteLine($"warning: --max-new-tokens {options.MaxNewTokens} does not fit the model's context of {context} positions " +
                                 $"with this {ids.Length}-token prompt: at most {room} new tokens are generated.");
            int[] generated = lm.CreateGenerator().Generate([ids], options)[0];
            string? decoded = lm.Tokenizer?.Decode(generated);
            switch (result.GetValue(format))
            {
                case "ids":
                    stdout.WriteLine(string.Join(",", generated));
                    break;
                case "json":
                    var json = new JsonObject
                    {
                        ["prompt_ids"] = new JsonArray(ids.Select(i => (JsonNode?)i).ToArray()),
                        ["generated_ids"] = new JsonArray(generated.Select(i => (JsonNode?)i).ToArray()),
                        ["text"] = decoded,
                    };
                    stdout.WriteLine(json.ToJsonString(new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }));
                    break;
                default:
                    if (decoded is null)
                    {
                        stderr.WriteLine("(this model has no tokenizer: printing token ids)");
                        stdout.WriteLine(string.Join(",", generated));
                    }
                    else stdout.WriteLine(decoded);
                    break;
            }
            return 0;
        });
        return command;
    }

    static int[] ParseIds(string text, int vocabSize)
    {
        var parts = text.Split([',', ' '], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (parts.Length == 0) throw new CliException("--prompt-ids is empty: give at least one token id (e.g. 1 for BOS).");
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]))
                throw new CliException($"--prompt-ids: '{parts[i]}' is not a token id (non-negative integer).");
            if (ids[i] >= vocabSize)
                throw new CliException($"--prompt-ids: {ids[i]} is outside the model's vocabulary (0 to {vocabSize - 1}).");
        }
        return ids;
    }
}
