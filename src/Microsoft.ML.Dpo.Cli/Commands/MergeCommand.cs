using System.CommandLine;
using Microsoft.ML.Dpo.Lora;

namespace MlDpo.Commands;

/// <summary><c>mldpo merge</c>: fold a LoRA adapter into its base model and write a plain Hugging Face directory.</summary>
internal static class MergeCommand
{
    public static Command Create()
    {
        var model = Cli.Required("--model", "The base model: a Hugging Face directory.");
        var adapter = Cli.Required("--adapter", "The LoRA adapter directory (adapter_config.json + adapter_model.safetensors, PEFT's format).");
        var output = Cli.Required("--output", "Where the merged model is written (replaced atomically).");
        var command = new Command("merge", "Merge a LoRA adapter into its base model and save a plain Hugging Face directory.");
        command.Options.Add(model);
        command.Options.Add(adapter);
        command.Options.Add(output);
        Cli.SetAction(command, (result, _) =>
        {
            string adapterDir = result.GetValue(adapter)!;
            if (!Directory.Exists(adapterDir)) throw new CliException($"Adapter directory '{adapterDir}' does not exist.");
            LoraAdapters.Merge(result.GetValue(model)!, adapterDir, result.GetValue(output)!);
            Cli.Writers(result).Out.WriteLine($"Merged model written to {result.GetValue(output)}");
            return 0;
        });
        return command;
    }
}
