using Microsoft.Extensions.Options;
using System.Threading.RateLimiting;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// The per-client allowance for job submissions: a token bucket per client (the authenticated
/// principal's name, else the remote address), one permit per job. A single submission takes one
/// permit, a batch one per job, from the same bucket, so batching does not raise a client's rate.
/// An invalid batch costs one permit, as an invalid single submission does.
/// </summary>
/// <remarks>
/// Checked by the submission endpoints themselves, not by ASP.NET Core's rate-limiting middleware:
/// the middleware takes one permit per request, and a batch's size is known only once its body is read.
/// </remarks>
internal sealed class SubmissionRateLimiter : IAsyncDisposable
{
    /// <summary>Null when rate limiting is off.</summary>
    private readonly PartitionedRateLimiter<string>? _buckets;

    /// <summary>How long the bucket takes to gain one permit.</summary>
    private readonly TimeSpan _refillOne;

    public SubmissionRateLimiter(IOptions<RateLimitingOptions> options)
    {
        var settings = options.Value;
        Burst = settings.Enabled ? settings.Burst : int.MaxValue;
        _refillOne = TimeSpan.FromSeconds(1.0 / settings.PermitsPerSecond);
        if (!settings.Enabled)
        {
            return;
        }

        var bucket = new TokenBucketRateLimiterOptions
        {
            TokenLimit = settings.Burst,
            TokensPerPeriod = settings.PermitsPerSecond,
            ReplenishmentPeriod = TimeSpan.FromSeconds(1),
            // Refuse at once: a queued request holds a connection and answers late anyway.
            QueueLimit = 0,
            AutoReplenishment = true,
        };
        // Buckets of clients gone quiet (full again) are dropped by the partitioned limiter.
        _buckets = PartitionedRateLimiter.Create<string, string>(client => RateLimitPartition.GetTokenBucketLimiter(client, _ => bucket));
    }

    /// <summary>The most permits one request can ever get at once: the bucket's size.</summary>
    public int Burst { get; }

    /// <summary>
    /// Takes <paramref name="permits"/> (1 to <see cref="Burst"/>) from the caller's bucket; false,
    /// taking none, with the time until that many will be there when the bucket holds fewer.
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

        using var lease = _buckets.AttemptAcquire(ClientOf(context), permits);
        if (lease.IsAcquired)
        {
            return true;
        }

        retryAfter = lease.TryGetMetadata(MetadataName.RetryAfter, out var wait) ? wait : TimeSpan.FromSeconds(1);
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
        if (_buckets is null || _buckets.GetStatistics(ClientOf(context)) is not { CurrentAvailablePermits: < 1 })
        {
            return true;
        }

        retryAfter = _refillOne;
        return false;
    }

    /// <summary>Takes one permit if there is one, for a request refused after it was read (an invalid batch).</summary>
    public void Spend(HttpContext context)
    {
        if (_buckets is not null)
        {
            using var lease = _buckets.AttemptAcquire(ClientOf(context), 1);
        }
    }

    private static string ClientOf(HttpContext context) =>
        context.User.Identity is { IsAuthenticated: true, Name: { Length: > 0 } name }
            ? $"principal:{name}"
            : $"address:{context.Connection.RemoteIpAddress}";

    public ValueTask DisposeAsync() => _buckets?.DisposeAsync() ?? ValueTask.CompletedTask;
}
