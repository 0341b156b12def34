using System.ComponentModel.DataAnnotations;
using System.Globalization;
using Conveyor.ServiceDefaults;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// <c>--messages 50000 --size 1024 --runs 5 [--prefetch 1000,5000] [--mode move|memory] [--faults synthetic|worker]</c> (prefetch: Conveyor's
/// <see cref="Conveyor.Api.ErrorQueues.ErrorQueueOptions.Prefetch"/>, one variant per value; default the
/// option's default; mode memory: <see cref="MemoryBenchmark"/>; faults: what the error queue holds, <see cref="FaultKinds"/>); the broker from the same <c>RabbitMq__*</c> variables as
/// the services (<c>eval "$(scripts/services.sh env)"</c>), the management API's address included
/// (<c>RabbitMq__ManagementUrl</c>, <see cref="RabbitMqOptions.ManagementApiAddress"/>).
/// </summary>
public sealed record BenchSettings(int Messages, int BodyBytes, int Runs, IReadOnlyList<int> Prefetches, RabbitMqOptions Broker, string Mode = "move", string Faults = FaultKinds.Synthetic)
{
    public static BenchSettings From(string[] args, Func<string, string?> environment)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i + 1 < args.Length; i += 2)
        {
            options[args[i].TrimStart('-')] = args[i + 1];
        }

        int Option(string name, int fallback) =>
            options.TryGetValue(name, out var text) ? int.Parse(text, CultureInfo.InvariantCulture) : fallback;

        var broker = new RabbitMqOptions
        {
            Host = environment("RabbitMq__Host") ?? "127.0.0.1",
            Port = int.Parse(environment("RabbitMq__Port") ?? "5672", CultureInfo.InvariantCulture),
            ManagementPort = int.Parse(environment("RabbitMq__ManagementPort") ?? "15672", CultureInfo.InvariantCulture),
            ManagementUrl = environment("RabbitMq__ManagementUrl"),
            Username = environment("RabbitMq__Username") ?? "guest",
            Password = environment("RabbitMq__Password") ?? "guest",
            ConnectTimeoutSeconds = 30,
        };
        // As the services refuse it at start: a bad RabbitMq__ManagementUrl fails here, not after the queues are filled.
        Validator.ValidateObject(broker, new ValidationContext(broker), validateAllProperties: true);
        IReadOnlyList<int> prefetches = options.TryGetValue("prefetch", out var list)
            ? [.. list.Split(',').Select(p => int.Parse(p, CultureInfo.InvariantCulture))]
            : [new Conveyor.Api.ErrorQueues.ErrorQueueOptions().Prefetch];
        var faults = options.GetValueOrDefault("faults", FaultKinds.Synthetic);
        if (faults is not (FaultKinds.Synthetic or FaultKinds.Worker))
        {
            throw new ArgumentException($"--faults {faults}: expected {FaultKinds.Synthetic} or {FaultKinds.Worker}.");
        }

        return new BenchSettings(Option("messages", 50_000), Option("size", 1024), Option("runs", 5), prefetches, broker,
            options.GetValueOrDefault("mode", "move"), faults);
    }
}

/// <summary>What the benchmark's error queues hold.</summary>
public static class FaultKinds
{
    /// <summary>A random body of <c>--size</c> bytes under five short fault headers (no stack trace, no host headers).</summary>
    public const string Synthetic = "synthetic";

    /// <summary>
    /// Copies of a message the worker really dead-lettered (<c>Fixtures/worker-fault.json</c>): the Api's
    /// ~1.1 KiB envelope under the worker's fault headers, stack trace included (~3.2 KB); <c>--size</c> is not used.
    /// </summary>
    public const string Worker = "worker";
}
