using System.CommandLine;
using Microsoft.ML.Dpo;
using Microsoft.ML.Dpo.Checkpoints;

namespace MlDpo.Commands;

/// <summary><c>mldpo export</c>: write a model for an inference engine (GGUF for llama.cpp, LLamaSharp, Ollama, LM Studio).</summary>
internal static class ExportCommand
{
    public static Command Create()
    {
        var model = Cli.Required("--model", "The model: a Hugging Face directory with its tokenizer files.");
        var format = Cli.Choice("--format", "The file format: gguf (llama.cpp and the engines built on it).", "gguf", "gguf");
        var output = Cli.Required("--output", "The file to write (FILE.gguf); an Ollama Modelfile is written beside it as FILE.Modelfile.");
        var type = Cli.Choice("--type", "The encoding of the weight matrices: f32, f16 (half precision) or q8_0 (8-bit blocks); norms and biases stay f32.",
            "f16", "f32", "f16", "q8_0");
        var force = Cli.Option("--force", "Replace --output (and its Modelfile) even when mldpo did not write it (never --model itself).", false);
        var command = new Command("export", "Export a model for an inference engine: a GGUF file for llama.cpp, LLamaSharp, Ollama and LM Studio.");
        command.Options.Add(model);
        command.Options.Add(format);
        command.Options.Add(output);
        command.Options.Add(type);
        command.Options.Add(force);
        Cli.SetAction(command, (result, _) =>
        {
            string path = result.GetValue(model)!, file = result.GetValue(output)!;
            if (!Directory.Exists(path)) throw new CliException($"Model directory '{path}' does not exist.");
            var ggufType = result.GetValue(type) switch { "f32" => GgufType.F32, "q8_0" => GgufType.Q8_0, _ => GgufType.F16 };
            using var lm = LanguageModel.Load(path);
            if (lm.Tokenizer is null) throw new CliException($"Model directory '{path}' has no tokenizer files; a GGUF file needs the tokenizer.");
            lm.ExportGguf(file, ggufType, result.GetValue(force) ? OutputOverwrite.Always : OutputOverwrite.OwnOutputOnly);
            var info = new FileInfo(file);
            Cli.Writers(result).Out.WriteLine(
                $"GGUF ({result.GetValue(type)}, {info.Length / 1048576.0:F1} MiB) written to {file}; Ollama: ollama create {Path.GetFileNameWithoutExtension(file)} -f {Path.ChangeExtension(file, ".Modelfile")}");
            return 0;
        });
        return command;
    }
}
