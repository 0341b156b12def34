using System.Threading.RateLimiting;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// A token bucket per client (<see cref="ClientOf"/>): <c>burst</c> permits at most, refilled with
/// <c>permitsPerSecond</c> at once every second. The submissions' allowance (<see cref="SubmissionRateLimiter"/>) and
/// the reads' (<see cref="ReadRateLimiter"/>) each have one set of their own, so a client reading hard keeps its
/// submissions and the other way round.
/// </summary>
internal sealed class ClientBuckets : IAsyncDisposable
{
    /// <summary>A bucket gains <see cref="_permitsPerRefill"/> at once, every this long.</summary>
    private static readonly TimeSpan RefillPeriod = TimeSpan.FromSeconds(1);

    /// <summary>Null when rate limiting is off.</summary>
    private readonly PartitionedRateLimiter<string>? _buckets;

    private readonly int _permitsPerRefill;

    /// <param name="enabled">False: every permit is granted, and <see cref="Burst"/> is <see cref="int.MaxValue"/>.</param>
    public ClientBuckets(bool enabled, int permitsPerSecond, int burst)
    {
        Burst = enabled ? burst : int.MaxValue;
        _permitsPerRefill = permitsPerSecond;
        if (!enabled)
        {
            return;
        }

        var bucket = new TokenBucketRateLimiterOptions
        {
            TokenLimit = burst,
            TokensPerPeriod = permitsPerSecond,
            ReplenishmentPeriod = RefillPeriod,
            // Refuse at once: a queued request holds a connection and answers late anyway.
            QueueLimit = 0,
            AutoReplenishment = true,
        };
        // Buckets of clients gone quiet (full again) are dropped by the partitioned limiter. Each bucket
        // refills on a timer of its own, every RefillPeriod exactly: RateLimitPartition.GetTokenBucketLimiter
        // would refill them all from the partitioned limiter's 100 ms heartbeat instead, up to 100 ms
        // after a refill is due, so a client that waited its Retry-After could find it had not come yet.
        _buckets = PartitionedRateLimiter.Create<string, string>(client => RateLimitPartition.Get(client, _ => new TokenBucketRateLimiter(bucket)));
    }

    /// <summary>Whether permits are counted at all (<c>RateLimiting:Enabled</c>).</summary>
    public bool Enabled => _buckets is not null;

    /// <summary>The most permits one request can ever get at once: the bucket's size.</summary>
    public int Burst { get; }

    /// <summary>Takes <paramref name="permits"/> from <paramref name="client"/>'s bucket if it holds them all; else takes none.</summary>
    public bool TryTake(string client, int permits)
    {
        if (_buckets is not { } buckets)
        {
            return true;
        }

        using var lease = buckets.AttemptAcquire(client, permits);
        return lease.IsAcquired;
    }

    /// <summary>
    /// The longest it takes <paramref name="client"/>'s bucket to hold <paramref name="permits"/> (while nothing else
    /// spends them): it gains <see cref="_permitsPerRefill"/> at a time, so as many refill periods as refills cover the
    /// shortfall, rounded up. Sooner when the next refill is nearer than a period. Not a lease's own hint: it rounds the
    /// refills needed down (5 permits missing at 2 a refill gave 2 refills, when 3 are needed).
    /// </summary>
    public TimeSpan WaitFor(string client, int permits)
    {
        var available = _buckets?.GetStatistics(client)?.CurrentAvailablePermits ?? 0;
        var missing = Math.Max(1, permits - Math.Max(0, available));
        var refills = (missing + _permitsPerRefill - 1) / _permitsPerRefill;
        return RefillPeriod * refills;
    }

    /// <summary>Whose bucket a request takes from: the authenticated principal's name, else the remote address.</summary>
    public static string ClientOf(HttpContext context) =>
        context.User.Identity is { IsAuthenticated: true, Name: { Length: > 0 } name }
            ? $"principal:{name}"
            : $"address:{context.Connection.RemoteIpAddress}";

    public ValueTask DisposeAsync() => _buckets?.DisposeAsync() ?? ValueTask.CompletedTask;
}
