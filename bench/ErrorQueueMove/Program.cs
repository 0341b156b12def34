using Conveyor.Bench.ErrorQueueMove;

var settings = BenchSettings.From(args, Environment.GetEnvironmentVariable);
return settings.Mode == "memory"
    ? await MemoryBenchmark.RunAsync(settings)
    : await MoveBenchmark.RunAsync(settings);
