using System.CommandLine;
using System.Globalization;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Modeling;
using Microsoft.ML.Dpo.Tokenization;

namespace MlDpo.Commands;

/// <summary><c>mldpo init</c>: a new randomly initialised model (a preset) saved as a Hugging Face directory.</summary>
internal static class InitCommand
{
    public static Command Create()
    {
        var arch = Cli.Choice("--arch", "The architecture.", "llama", [.. ModelPresets.Architectures]);
        var preset = Cli.Choice("--preset", "The size: tiny (hidden 64, 2 layers, context 256), small (hidden 256, 8 layers, context 512, ~19M parameters " +
            "with the GPT-2 vocabulary) or medium (hidden 512, 12 layers, context 1024, ~64M).", "tiny", [.. ModelPresets.Names]);
        var tokenizer = Cli.Option("--tokenizer", "gpt2 (GPT-2's 50,257-token BPE), bytes (one token per UTF-8 byte plus <|endoftext|>: 257 ids, fast demos), " +
            "or a Hugging Face tokenizer directory.", "gpt2");
        var seed = Cli.Option("--seed", "Seed of the weight initialisation.", 42);
        var output = Cli.Required("--output", "The model directory to create (config.json, model.safetensors, tokenizer files).");
        var force = Cli.Option("--force", "Replace --output even when it holds files mldpo did not write (never the current folder or a folder containing it). " +
            "Without it an existing folder is replaced only when it is empty or mldpo wrote it.", false);
        var command = new Command("init", "Create a new randomly initialised model from a preset and save it as a Hugging Face directory.")
        {
            arch, preset, tokenizer, seed, output, force,
        };
        Cli.SetAction(command, (result, _) =>
        {
            var (stdout, _) = Cli.Writers(result);
            string outputDir = result.GetValue(output)!;
            var overwrite = result.GetValue(force) ? OutputOverwrite.Always : OutputOverwrite.OwnOutputOnly;
            string tokenizerArgument = result.GetValue(tokenizer)!;
            OutputFolder.EnsureReplaceable(outputDir, overwrite, tokenizerArgument is "gpt2" or "bytes" ? null : tokenizerArgument);   // before any work
            string tokenizerName = result.GetValue(tokenizer)!;
            string? scratch = null;
            try
            {
                TextTokenizer tok;
                if (tokenizerName == "gpt2") tok = TextTokenizer.Gpt2();
                else if (tokenizerName == "bytes")
                {
                    scratch = Directory.CreateTempSubdirectory("mldpo-init-").FullName;
                    tok = TextTokenizer.CreateByteLevel(scratch);
                }
                else if (Directory.Exists(tokenizerName)) tok = TextTokenizer.FromDirectory(tokenizerName);
                else throw new CliException($"--tokenizer must be gpt2, bytes or a tokenizer directory; '{tokenizerName}' is none of these.");

                string a = result.GetValue(arch)!, p = result.GetValue(preset)!;
                using var model = ModelPresets.CreateModel(a, p, tok, result.GetValue(seed));
                model.Save(outputDir, overwrite);
                var c = model.Network.Config;
                stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{a}/{p}: {ModelPresets.CountParameters(model.Network):N0} parameters (vocabulary {c.VocabSize:N0}, hidden {c.HiddenSize}, " +
                    $"{c.NumHiddenLayers} layers, {c.NumAttentionHeads} heads, context {c.MaxPositionEmbeddings}) written to {outputDir}"));
                return 0;
            }
            finally
            {
                if (scratch is not null) Directory.Delete(scratch, recursive: true);
            }
        });
        return command;
    }
}
