using Conveyor.Worker.Messaging;

namespace Conveyor.Worker.Failures;

/// <summary>
/// The waits between in-memory retries (<see cref="TransientRetryFilter"/>): <see cref="Min"/> × 2^retry,
/// capped at <see cref="Max"/>, plus up to <see cref="MaxJitter"/> at random, so a wait can exceed
/// <see cref="Max"/> by up to the jitter. (Not MassTransit's <c>ExponentialRetryPolicy</c>, whose
/// intervals are min + 2^retry × a random part of the delta, capped at max, then scaled by 0.75–1.25.)
/// </summary>
public sealed record RetryIntervals(int RetryLimit, TimeSpan Min, TimeSpan Max, TimeSpan MaxJitter)
{
    public static RetryIntervals From(ConsumerEndpointOptions options) => new(
        options.RetryLimit,
        TimeSpan.FromMilliseconds(options.RetryMinIntervalMilliseconds),
        TimeSpan.FromMilliseconds(options.RetryMaxIntervalMilliseconds),
        TimeSpan.FromMilliseconds(options.RetryIntervalDeltaMilliseconds));

    /// <summary>The wait after the failure of attempt <paramref name="retry"/> (0-based).</summary>
    /// <param name="random">A value in [0, 1) that picks the jitter; 1 gives its upper bound.</param>
    public TimeSpan Interval(int retry, double random)
    {
        var exponential = Min.TotalMilliseconds * Math.Pow(2, retry);
        var capped = Math.Min(exponential, Max.TotalMilliseconds);
        return TimeSpan.FromMilliseconds(capped + MaxJitter.TotalMilliseconds * random);
    }

    /// <summary>
    /// The wait before retry <paramref name="retry"/> (0-based) after a failure whose remote side asked for
    /// <paramref name="retryAfter"/>, when <paramref name="waited"/> has been spent waiting so far; null when
    /// the message should not wait in memory at all. A Retry-After longer than the usual interval is waited
    /// out when it fits in the budget (<see cref="WorstCaseTotal"/>, the hold checked against RabbitMQ's
    /// consumer_timeout), and otherwise left to the delayed redelivery, which honours it: retrying sooner
    /// would ask again of a remote side that said when it could answer.
    /// </summary>
    /// <param name="random">A value in [0, 1) that picks the jitter; 1 gives its upper bound.</param>
    /// <param name="redeliveryAhead">
    /// Whether a delayed redelivery may follow once the retries end. When none can, ending them for a long
    /// Retry-After sent the message to <c>_error</c> after fewer attempts than configured (one, when the
    /// first answer asked for it): instead the wait is as long as the budget allows while leaving every
    /// later retry its longest interval, and never shorter than the usual one, so every retry is taken
    /// and all of them stay within <see cref="WorstCaseTotal"/>.
    /// </param>
    public TimeSpan? WaitBefore(int retry, double random, TimeSpan? retryAfter, TimeSpan waited, bool redeliveryAhead = true)
    {
        var wait = Interval(retry, random);
        if (!redeliveryAhead)
        {
            var room = WorstCaseTotal() - waited - WorstCaseFrom(retry + 1);
            var asked = retryAfter is { } longer && longer > wait ? (longer < room ? longer : room) : wait;
            return asked > wait ? asked : wait;
        }

        if (retryAfter is { } remote && remote > wait)
        {
            wait = remote;
        }

        return waited + wait <= WorstCaseTotal() ? wait : null;
    }

    /// <summary>The most all of one message's waits can add up to: every retry taken, each with the whole jitter.</summary>
    public TimeSpan WorstCaseTotal() => WorstCaseFrom(0);

    /// <summary>The most the waits before retries <paramref name="retry"/> (0-based) onwards can add up to.</summary>
    private TimeSpan WorstCaseFrom(int retry)
    {
        var total = TimeSpan.Zero;
        for (; retry < RetryLimit; retry++)
        {
            total += Interval(retry, 1);
        }

        return total;
    }
}
