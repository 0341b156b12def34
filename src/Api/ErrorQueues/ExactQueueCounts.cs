using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// Ready messages and consumers of queues as the broker has them now, by a passive <c>queue.declare</c>
/// each. The management API's counters are statistics that lag by its collection interval (5 s by
/// default): read right after a move or a purge, the listing still showed the messages moved away.
/// </summary>
public sealed class ExactQueueCounts(ErrorQueueBroker broker, IOptions<RabbitMqOptions> options)
{
    /// <summary>A queue's counts; <c>Exists</c> false when it was deleted since it was listed.</summary>
    public readonly record struct Count(bool Exists, long Ready, int Consumers);

    /// <summary>
    /// The counts of <paramref name="queues"/>, read on one connection of their own, within the broker's
    /// connect timeout in all. Throws when the broker cannot be asked; the caller decides what then.
    /// </summary>
    public async Task<IReadOnlyDictionary<string, Count>> ReadAsync(IReadOnlyCollection<string> queues, CancellationToken cancellationToken)
    {
        var counts = new Dictionary<string, Count>(StringComparer.Ordinal);
        if (queues.Count == 0)
        {
            return counts;
        }

        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(TimeSpan.FromSeconds(options.Value.ConnectTimeoutSeconds));
        await using var connection = await broker.ConnectAsync("list", limit.Token);
        IChannel? channel = null;
        try
        {
            foreach (var queue in queues)
            {
                channel ??= await connection.CreateChannelAsync(cancellationToken: limit.Token);
                if (await channel.DeclarePassiveIfExistsAsync(queue, limit.Token) is { } declared)
                {
                    counts[queue] = new Count(true, declared.MessageCount, (int)Math.Min(declared.ConsumerCount, int.MaxValue));
                }
                else
                {
                    // Deleted since the listing. The broker closed the channel: the next queue gets another.
                    counts[queue] = new Count(false, 0, 0);
                    await channel.DisposeAsync();
                    channel = null;
                }
            }
        }
        finally
        {
            if (channel is not null)
            {
                await channel.DisposeAsync();
            }
        }

        return counts;
    }
}
