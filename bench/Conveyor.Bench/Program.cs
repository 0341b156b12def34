using Conveyor.Bench;
using Conveyor.Bench.Consume;
using Conveyor.Bench.Enqueue;
using Conveyor.Bench.Infrastructure;
using Conveyor.Bench.Memory;
using Conveyor.Bench.Redelivery;
using Conveyor.Bench.Reporting;
using Conveyor.Bench.Scaling;

var (command, options) = BenchOptions.Parse(args);
var benchmarks = new Dictionary<string, Func<BenchEnvironment, Task<BenchResult>>>
{
    ["consume"] = environment => new ConsumeBenchmark(environment, options).RunAsync(),
    ["enqueue"] = environment => new EnqueueBenchmark(environment, options).RunAsync(),
    ["redelivery"] = environment => new RedeliveryBenchmark(environment, options).RunAsync(),
    ["rss"] = environment => new RssBenchmark(environment, options).RunAsync(),
    ["scaling"] = environment => new ScalingBenchmark(environment, options).RunAsync(),
};

if (command == "report")
{
    await MarkdownReport.WriteAsync(options.RepositoryRoot);
    return 0;
}

var selected = command == "all" ? [.. benchmarks.Keys] : command.Split(',');
if (selected.FirstOrDefault(s => !benchmarks.ContainsKey(s)) is { } unknown)
{
    Console.Error.WriteLine($"unknown benchmark '{unknown}'; use one or more of: {string.Join(", ", benchmarks.Keys)}, all, report");
    return 2;
}

var failed = false;
foreach (var name in selected)
{
    if (name == "consume" && !WorkerRuntime.InChild)
    {
        // Measured as the worker ships (workstation GC, TieredPGO off): see WorkerRuntime.
        failed |= await WorkerRuntime.RunAsync(name, options.Arguments) != 0;
        continue;
    }

    // Each benchmark gets a fresh database and vhost, so topologies and tables never mix.
    await using var environment = await BenchEnvironment.CreateAsync();
    try
    {
        var result = await benchmarks[name](environment);
        await result.SaveAsync(options.RepositoryRoot);
        await MachineInfo.SaveAsync(options.RepositoryRoot, environment);
        Console.WriteLine(result.ToText());
        Console.WriteLine();
    }
    catch (Exception exception) when (exception is not OutOfMemoryException)
    {
        failed = true;
        Console.Error.WriteLine($"{name} failed: {exception}");
    }
}

await MarkdownReport.WriteAsync(options.RepositoryRoot);
return failed ? 1 : 0;
