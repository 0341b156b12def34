using Conveyor.Worker.Failures;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// The longest a consumer endpoint can keep one delivery unacked, to hold against RabbitMQ's
/// consumer_timeout. A delivery is acked once its last attempt ends (or once it is stored for a delayed
/// redelivery), so its in-memory retries hold it: every attempt may run to its timeout and every wait
/// take its longest. A prefetched delivery also waits, unacked, for the handlings of the deliveries
/// ahead of it: at most <c>ceil(PrefetchCount / ConcurrentMessageLimit)</c> handlings, its own included.
/// Not counted: database time, the optional rate limit, a long job's run (no setting bounds it;
/// <see cref="DeliveryDeadline"/> stops it near the timeout), and the few seconds a failed delivery waits
/// for a key ring that cannot be read, to check its seal or to seal its redelivery
/// (<see cref="Redelivery.RedeliveryFilter{T}"/>).
/// </summary>
/// <param name="Handlings">Handlings from delivery to ack at the most, its own included.</param>
/// <param name="Attempts">Attempts of one handling: the first and every in-memory retry.</param>
/// <param name="AttemptTimeout">The longest one attempt takes (its HTTP timeout); zero when no setting bounds it.</param>
/// <param name="RetryWaits">The waits between one handling's attempts, at their longest.</param>
public sealed record UnackedHold(int Handlings, int Attempts, TimeSpan AttemptTimeout, TimeSpan RetryWaits)
{
    public static UnackedHold Of(ConsumerEndpointOptions options, TimeSpan attemptTimeout) => new(
        (options.PrefetchCount + options.ConcurrentMessageLimit - 1) / options.ConcurrentMessageLimit,
        options.RetryLimit + 1,
        attemptTimeout,
        RetryIntervals.From(options).WorstCaseTotal());

    /// <summary>One delivery's own handling: every attempt to its timeout, every wait at its longest.</summary>
    public TimeSpan Handling => AttemptTimeout * Attempts + RetryWaits;

    /// <summary>From delivery to ack, at the longest.</summary>
    public TimeSpan Total => Handling * Handlings;

    /// <summary>
    /// How long one attempt may take at most for <see cref="Total"/> to stay within <paramref name="limit"/>
    /// (for a long job, whose attempt no setting bounds); zero when the waits alone reach it.
    /// </summary>
    public TimeSpan AttemptBudget(TimeSpan limit)
    {
        var budget = (limit - RetryWaits * Handlings) / (Handlings * Attempts);
        return budget > TimeSpan.Zero ? budget : TimeSpan.Zero;
    }
}
