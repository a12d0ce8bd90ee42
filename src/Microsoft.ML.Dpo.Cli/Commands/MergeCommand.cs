using System.CommandLine;
using Microsoft.ML.Dpo.Checkpoints;
using Microsoft.ML.Dpo.Lora;

namespace MlDpo.Commands;

/// <summary><c>mldpo merge</c>: fold a LoRA adapter into its base model and write a plain Hugging Face directory.</summary>
internal static class MergeCommand
{
    public static Command Create()
    {
        var model = Cli.Required("--model", "The base model: a Hugging Face directory.");
        var adapter = Cli.Required("--adapter", "The LoRA adapter directory (adapter_config.json + adapter_model.safetensors, PEFT's format).");
        var output = Cli.Required("--output", "Where the merged model is written, atomically; an existing folder is replaced only when it is empty or mldpo wrote it.");
        var force = Cli.Option("--force", "Replace --output even when it holds files mldpo did not write (never the current folder, --model or --adapter, " +
            "nor a folder containing them).", false);
        var command = new Command("merge", "Merge a LoRA adapter into its base model and save a plain Hugging Face directory.");
        command.Options.Add(model);
        command.Options.Add(adapter);
        command.Options.Add(output);
        command.Options.Add(force);
        Cli.SetAction(command, (result, _) =>
        {
            string adapterDir = result.GetValue(adapter)!;
            var overwrite = result.GetValue(force) ? OutputOverwrite.Always : OutputOverwrite.OwnOutputOnly;
            OutputFolder.EnsureReplaceable(result.GetValue(output)!, overwrite, result.GetValue(model), adapterDir);
            if (!Directory.Exists(adapterDir)) throw new CliException($"Adapter directory '{adapterDir}' does not exist.");
            LoraAdapters.Merge(result.GetValue(model)!, adapterDir, result.GetValue(output)!, overwrite: overwrite);
            Cli.Writers(result).Out.WriteLine($"Merged model written to {result.GetValue(output)}");
            return 0;
        });
        return command;
    }
}
