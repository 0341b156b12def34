using System.Globalization;
using Conveyor.ServiceDefaults;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// <c>--messages 50000 --size 1024 --runs 5 [--prefetch 1000,5000] [--mode move|memory]</c> (prefetch: Conveyor's
/// <see cref="Conveyor.Api.ErrorQueues.ErrorQueueOptions.Prefetch"/>, one variant per value; default the
/// option's default; mode memory: <see cref="MemoryBenchmark"/>); the broker from the same <c>RabbitMq__*</c> variables as
/// the services (<c>eval "$(scripts/services.sh env)"</c>).
/// </summary>
public sealed record BenchSettings(int Messages, int BodyBytes, int Runs, IReadOnlyList<int> Prefetches, RabbitMqOptions Broker, string Mode = "move")
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
            Username = environment("RabbitMq__Username") ?? "guest",
            Password = environment("RabbitMq__Password") ?? "guest",
            ConnectTimeoutSeconds = 30,
        };
        IReadOnlyList<int> prefetches = options.TryGetValue("prefetch", out var list)
            ? [.. list.Split(',').Select(p => int.Parse(p, CultureInfo.InvariantCulture))]
            : [new Conveyor.Api.ErrorQueues.ErrorQueueOptions().Prefetch];
        return new BenchSettings(Option("messages", 50_000), Option("size", 1024), Option("runs", 5), prefetches, broker,
            options.GetValueOrDefault("mode", "move"));
    }
}
