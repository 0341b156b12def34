using Microsoft.Extensions.Options;
using System.Threading.RateLimiting;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// The per-client allowance for job submissions: a token bucket per client (the authenticated
/// principal's name, else the remote address), one permit per job. A single submission takes one
/// permit, a batch one per job, from the same bucket, so batching does not raise a client's rate.
/// </summary>
/// <remarks>
/// Checked by the submission endpoints themselves, not by ASP.NET Core's rate-limiting middleware:
/// the middleware takes one permit per request, and a batch's size is known only once its body is read.
/// </remarks>
internal sealed class SubmissionRateLimiter : IAsyncDisposable
{
    /// <summary>Null when rate limiting is off.</summary>
    private readonly PartitionedRateLimiter<string>? _buckets;

    public SubmissionRateLimiter(IOptions<RateLimitingOptions> options)
    {
        var settings = options.Value;
        Burst = settings.Enabled ? settings.Burst : int.MaxValue;
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

    private static string ClientOf(HttpContext context) =>
        context.User.Identity is { IsAuthenticated: true, Name: { Length: > 0 } name }
            ? $"principal:{name}"
            : $"address:{context.Connection.RemoteIpAddress}";

    public ValueTask DisposeAsync() => _buckets?.DisposeAsync() ?? ValueTask.CompletedTask;
}
