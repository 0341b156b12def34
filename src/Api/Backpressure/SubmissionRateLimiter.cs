using Microsoft.Extensions.Options;
using System.Threading.RateLimiting;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// The per-client allowance for job submissions: a token bucket per client (the authenticated
/// principal's name, else the remote address), one permit per job. A single submission takes one
/// permit, a batch one per job, from the same bucket, so batching does not raise a client's rate.
/// A batch refused once read (invalid, over the bucket's permits, for a full queue) costs one permit, as a
/// refused single submission does; all of its own when, refused for a full queue or a broker alarm, it was
/// looked up as a batch sent again (its first job a repeat) and then found a job to publish.
/// </summary>
/// <remarks>
/// Checked by the submission endpoints themselves, not by ASP.NET Core's rate-limiting middleware:
/// the middleware takes one permit per request, and a batch's size is known only once its body is read.
/// </remarks>
internal sealed class SubmissionRateLimiter : IAsyncDisposable
{
    /// <summary>A bucket gains <see cref="_permitsPerRefill"/> at once, every this long.</summary>
    private static readonly TimeSpan RefillPeriod = TimeSpan.FromSeconds(1);

    /// <summary>Null when rate limiting is off.</summary>
    private readonly PartitionedRateLimiter<string>? _buckets;

    private readonly int _permitsPerRefill;

    public SubmissionRateLimiter(IOptions<RateLimitingOptions> options)
    {
        var settings = options.Value;
        Burst = settings.Enabled ? settings.Burst : int.MaxValue;
        _permitsPerRefill = settings.PermitsPerSecond;
        if (!settings.Enabled)
        {
            return;
        }

        var bucket = new TokenBucketRateLimiterOptions
        {
            TokenLimit = settings.Burst,
            TokensPerPeriod = settings.PermitsPerSecond,
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

    /// <summary>The most permits one request can ever get at once: the bucket's size.</summary>
    public int Burst { get; }

    /// <summary>
    /// Takes <paramref name="permits"/> (1 to <see cref="Burst"/>) from the caller's bucket. When the bucket
    /// holds fewer: false, taking one if there is one (a batch refused once read pays as a refused single
    /// submission does, so resending it drains the bucket instead of costing nothing), with the time until
    /// that many will be there.
    /// </summary>
    public bool TryAcquire(HttpContext context, int permits, out TimeSpan retryAfter)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(permits, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(permits, Burst);
        retryAfter = TimeSpan.Zero;
        if (_buckets is null)
        {
            return true;
        }

        var client = ClientOf(context);
        using var lease = _buckets.AttemptAcquire(client, permits);
        if (lease.IsAcquired)
        {
            return true;
        }

        using var spent = _buckets.AttemptAcquire(client, 1);
        // Not the lease's own hint: it rounds the refills needed down (5 permits missing at 2 a refill
        // gave 2 refills, when 3 are needed).
        retryAfter = WaitFor(permits, _buckets.GetStatistics(client)?.CurrentAvailablePermits ?? 0);
        return false;
    }

    /// <summary>
    /// Whether the caller's bucket holds a permit now, taking none: a batch is let in to be read only
    /// then, and takes all its permits at once when its size is known. Taking one on arrival and the
    /// rest later would starve a batch retried as told: each attempt would spend the permit that
    /// refilled while it waited.
    /// </summary>
    public bool HasPermit(HttpContext context, out TimeSpan retryAfter)
    {
        retryAfter = TimeSpan.Zero;
        if (_buckets is null || _buckets.GetStatistics(ClientOf(context)) is not { CurrentAvailablePermits: < 1 } statistics)
        {
            return true;
        }

        retryAfter = WaitFor(1, statistics.CurrentAvailablePermits);
        return false;
    }

    /// <summary>Takes one permit if there is one, for a request refused after it was read (an invalid batch, a full queue).</summary>
    public void Spend(HttpContext context)
    {
        if (_buckets is not null)
        {
            using var lease = _buckets.AttemptAcquire(ClientOf(context), 1);
        }
    }

    /// <summary>
    /// The longest it takes a bucket holding <paramref name="available"/> to hold <paramref name="permits"/>
    /// (while nothing else spends them): it gains <see cref="_permitsPerRefill"/> at a time, so as many
    /// refill periods as refills cover the shortfall, rounded up. Sooner when the next refill is nearer
    /// than a period.
    /// </summary>
    private TimeSpan WaitFor(int permits, long available)
    {
        var missing = Math.Max(1, permits - Math.Max(0, available));
        var refills = (missing + _permitsPerRefill - 1) / _permitsPerRefill;
        return RefillPeriod * refills;
    }

    private static string ClientOf(HttpContext context) =>
        context.User.Identity is { IsAuthenticated: true, Name: { Length: > 0 } name }
            ? $"principal:{name}"
            : $"address:{context.Connection.RemoteIpAddress}";

    public ValueTask DisposeAsync() => _buckets?.DisposeAsync() ?? ValueTask.CompletedTask;
}
