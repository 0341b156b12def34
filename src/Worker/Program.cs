using Conveyor.Worker;

return await WorkerApp.RunAsync(args);
