using System.CommandLine;
using MlDpo.Commands;

var root = new RootCommand("mldpo: preference alignment of language models (SFT, DPO) with Microsoft.ML.Dpo.");
root.Subcommands.Add(InfoCommand.Create());
return await root.Parse(args).InvokeAsync();
