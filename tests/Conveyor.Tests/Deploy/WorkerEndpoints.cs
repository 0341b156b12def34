using Conveyor.Worker;
using MassTransit;

namespace Conveyor.Tests.Deploy;

/// <summary>A receive endpoint of the worker: its consumer's configuration name and its queue.</summary>
public sealed record WorkerEndpoint(string ConsumerName, string Queue);

/// <summary>
/// The worker's receive endpoints, read from its consumer definitions: the queue names are the
/// ones the bus declares (<c>ConfigureEndpoints</c> with the kebab-case formatter), so a consumer
/// added or renamed in code shows up here without touching the tests.
/// </summary>
internal static class WorkerEndpoints
{
    private static readonly Lazy<IReadOnlyList<WorkerEndpoint>> Endpoints = new(Discover);

    public static IReadOnlyList<WorkerEndpoint> All => Endpoints.Value;

    public static IReadOnlySet<string> Queues => All.Select(e => e.Queue).ToHashSet(StringComparer.Ordinal);

    private static List<WorkerEndpoint> Discover() =>
        typeof(WorkerApp).Assembly.GetTypes()
            .Where(type => type is { IsClass: true, IsAbstract: false } && typeof(IConsumerDefinition).IsAssignableFrom(type))
            .Select(type =>
            {
                var definition = (IConsumerDefinition)Activator.CreateInstance(type)!;
                var consumerName = type.GetField("ConsumerName")?.GetRawConstantValue() as string
                    ?? throw new InvalidOperationException($"{type.Name} has no ConsumerName constant naming its Consumers:<Name> section");
                return new WorkerEndpoint(consumerName, definition.GetEndpointName(KebabCaseEndpointNameFormatter.Instance));
            })
            .OrderBy(e => e.Queue, StringComparer.Ordinal)
            .ToList();
}
