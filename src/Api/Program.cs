await Conveyor.Api.ApiApp.Build(args).RunAsync();
