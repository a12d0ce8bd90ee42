using System.CommandLine;

namespace MlDpo.Commands;

/// <summary>The <c>mldpo</c> command line: builds the root command and runs it.</summary>
public static class CliApp
{
    /// <summary>The root command with every verb.</summary>
    public static RootCommand Build()
    {
        var root = new RootCommand("mldpo: preference alignment of language models (SFT, DPO, ORPO, KTO) with Microsoft.ML.Dpo.");
        root.Subcommands.Add(InfoCommand.Create());
        root.Subcommands.Add(InitCommand.Create());
        root.Subcommands.Add(GenerateCommand.Create());
        root.Subcommands.Add(TrainCommands.CreateSft());
        root.Subcommands.Add(TrainCommands.CreateDpo());
        root.Subcommands.Add(TrainCommands.CreateOrpo());
        root.Subcommands.Add(TrainCommands.CreateKto());
        root.Subcommands.Add(TrainCommands.CreateGrpo());
        root.Subcommands.Add(TrainCommands.CreateRloo());
        root.Subcommands.Add(TrainCommands.CreateOnlineDpo());
        root.Subcommands.Add(TrainCommands.CreateReward());
        root.Subcommands.Add(EvaluateCommand.Create());
        root.Subcommands.Add(BinarizeCommand.Create());
        root.Subcommands.Add(MergeCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(ShiftCommand.Create());
        return root;
    }

    /// <summary>
    /// Parses and runs <paramref name="args"/>. With <paramref name="output"/>/<paramref name="error"/> (e.g. from a test) the verbs
    /// write there, never draw progress bars, and no Ctrl+C handler is installed; otherwise they write to the console and Ctrl+C
    /// cancels training (which writes a checkpoint first).
    /// </summary>
    /// <returns>The exit code: 0 on success, 1 on an error, 130 when cancelled.</returns>
    public static int Run(string[] args, TextWriter? output = null, TextWriter? error = null)
    {
        bool console = output is null && error is null;
        var configuration = new InvocationConfiguration
        {
            Output = output ?? Console.Out,
            Error = error ?? Console.Error,
            // Training checks the token after each optimizer step and then writes a checkpoint: give it time before the process is ended.
            ProcessTerminationTimeout = console ? TimeSpan.FromMinutes(10) : null,
        };
        return Build().Parse(args).Invoke(configuration);
    }
}
