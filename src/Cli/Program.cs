return await Conveyor.Cli.CliApp.RunAsync(args, Console.Out, Console.Error);
