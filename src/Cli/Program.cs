return await Conveyor.Cli.CliApp.RunInConsoleAsync(args);
