return MlDpo.Commands.CliApp.Run(args);
