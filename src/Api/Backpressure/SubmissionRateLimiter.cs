using Microsoft.Extensions.Options;

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
internal sealed class SubmissionRateLimiter(IOptions<RateLimitingOptions> options, RateLimitRefusals refusals) : IAsyncDisposable
{
    private readonly RateLimitRefusals _refusals = refusals;

    private readonly ClientBuckets _buckets = new(options.Value.Enabled, options.Value.PermitsPerSecond, options.Value.Burst);

    /// <summary>The most permits one request can ever get at once: the bucket's size.</summary>
    public int Burst => _buckets.Burst;

    /// <summary>
    /// The permits of one request, taken from the caller's bucket as the request goes on (<see cref="RequestPermits"/>):
    /// one to begin with, a batch's count once it is known (<see cref="RequestPermits.Need"/>).
    /// </summary>
    public RequestPermits ForRequest(HttpContext context) => new(this, ClientBuckets.ClientOf(context));

    /// <summary>
    /// What one request took from its client's bucket, and takes as it goes: one permit before its body is read
    /// (<see cref="TryTakeOne"/>; a batch knows how many it needs only after, <see cref="Need"/>), all of its own when it is accepted
    /// (<see cref="TryTakeAll"/>), one when it is refused (<see cref="PayRefusal"/>). The permit taken first counts
    /// towards the others, so a request pays one permit in all when refused, its own number when accepted, however
    /// its permits were taken.
    /// </summary>
    public sealed class RequestPermits(SubmissionRateLimiter limiter, string client)
    {
        /// <summary>Permits taken so far: 0, 1 or all of them.</summary>
        private int _taken;

        /// <summary>Permits the request needs: 1 until <see cref="Need"/> says otherwise.</summary>
        private int _permits = 1;

        /// <summary>
        /// Sets how many permits the request needs (1 to <see cref="Burst"/>), once it knows: a batch takes its first
        /// permit before its body is read, on a count of 1 (<see cref="TryTakeOne"/>), and learns its size after.
        /// </summary>
        public void Need(int count)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(count, Math.Max(1, _taken));
            ArgumentOutOfRangeException.ThrowIfGreaterThan(count, limiter.Burst);
            _permits = count;
        }

        /// <summary>
        /// Takes one permit if none was taken yet: before the request's body is read and before any query it makes,
        /// whatever it ends as, so that both are paid for even when the rest cannot be taken. False when the bucket holds
        /// none (nothing taken; nothing must be read), with the time until the request's permits will all be there.
        /// </summary>
        public bool TryTakeOne(out TimeSpan retryAfter)
        {
            retryAfter = TimeSpan.Zero;
            if (!limiter._buckets.Enabled || _taken > 0)
            {
                return true;
            }

            if (limiter._buckets.TryTake(client, 1))
            {
                _taken = 1;
                return true;
            }

            retryAfter = Refuse();
            return false;
        }

        /// <summary>
        /// Takes the request's permits not taken yet. When the bucket holds fewer: false, with one permit taken in all
        /// (the one taken before, else one now if there is one: a request refused once read pays as a refused single
        /// submission does, so resending it drains the bucket instead of costing nothing), and the time until the
        /// request's permits will all be there.
        /// </summary>
        public bool TryTakeAll(out TimeSpan retryAfter)
        {
            retryAfter = TimeSpan.Zero;
            if (!limiter._buckets.Enabled || _taken == _permits)
            {
                return true;
            }

            if (limiter._buckets.TryTake(client, _permits - _taken))
            {
                _taken = _permits;
                return true;
            }

            PayRefusal();
            // After the permit is taken: a client that waits as told finds all of its permits there.
            retryAfter = Refuse();
            return false;
        }

        /// <summary>Takes one permit, if there is one, for a request refused before it took any.</summary>
        public void PayRefusal()
        {
            if (limiter._buckets.Enabled && _taken == 0)
            {
                _taken = limiter._buckets.TryTake(client, 1) ? 1 : 0;
            }
        }

        /// <summary>Counts the refusal (<see cref="RateLimitRefusals"/>); the time until the request's permits will all be there.</summary>
        private TimeSpan Refuse()
        {
            limiter._refusals.Refused(RateLimitRefusals.Submit);
            return limiter._buckets.WaitFor(client, _permits);
        }
    }

    public ValueTask DisposeAsync() => _buckets.DisposeAsync();
}
