using Conveyor.Worker.Messaging;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Exponential backoff with jitter, capped at a maximum, for delayed redeliveries; a remote Retry-After lengthens it. With the
/// endpoint's header limit, which a stored copy must still meet when it comes back.
/// </summary>
public sealed class RedeliveryPolicy(
    int limit, TimeSpan baseDelay, double factor, TimeSpan maxDelay, double jitter, long maxHeaderBytes = RedeliveryStore.MaxStoredHeaderBytes)
{
    /// <summary>Honour a remote Retry-After up to this long, however long it asks for.</summary>
    public static readonly TimeSpan MaxRetryAfter = TimeSpan.FromHours(24);

    public static RedeliveryPolicy From(ConsumerEndpointOptions options) => new(
        options.RedeliveryLimit,
        TimeSpan.FromMilliseconds(options.RedeliveryBaseDelayMilliseconds),
        options.RedeliveryFactor,
        TimeSpan.FromMilliseconds(options.RedeliveryMaxDelayMilliseconds),
        options.RedeliveryJitter,
        options.MaxHeaderBytes);

    public int Limit { get; } = limit;

    /// <summary>
    /// The endpoint's <see cref="ConsumerEndpointOptions.MaxHeaderBytes"/>: a stored copy's headers are
    /// kept within it, as <see cref="RedeliveryHeaders.CountedBytes"/> measures them, so that the copy
    /// is not refused for its headers when it comes back (<see cref="RedeliveryStore.StorableHeaders"/>).
    /// </summary>
    public long MaxHeaderBytes { get; } = maxHeaderBytes;

    /// <summary>True when redelivery number <paramref name="attempt"/> (1-based) is still allowed.</summary>
    public bool Allows(int attempt) => attempt >= 1 && attempt <= Limit;

    /// <summary>
    /// The delay before redelivery number <paramref name="attempt"/> (1-based): the exponential delay
    /// spread by ± the jitter fraction, but never beyond the maximum delay. The jitter band is cut at the
    /// maximum, and at the cap it lies wholly below it ([max × (1 − jitter), max]), so messages that have
    /// reached the cap still come back spread out. Only a remote Retry-After may make it longer.
    /// </summary>
    /// <param name="random">A value in [0, 1) that picks the jitter.</param>
    public TimeSpan DelayFor(int attempt, TimeSpan? retryAfter, double random)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(attempt, 1);
        var max = maxDelay.TotalMilliseconds;
        var exponential = baseDelay.TotalMilliseconds * Math.Pow(factor, attempt - 1);
        var lowest = Math.Min(exponential, max) * (1 - jitter);
        var highest = Math.Min(exponential * (1 + jitter), max);
        var spread = lowest + (highest - lowest) * random;
        var delay = TimeSpan.FromMilliseconds(Math.Clamp(spread, 0, max));
        if (retryAfter is { } asked && asked > delay)
        {
            delay = asked < MaxRetryAfter ? asked : MaxRetryAfter;
        }

        return delay;
    }
}
