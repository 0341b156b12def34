using Conveyor.Bench.ErrorQueueMove;

return await MoveBenchmark.RunAsync(BenchSettings.From(args, Environment.GetEnvironmentVariable));
