using Conveyor.Api.Hosting;
using Conveyor.Api.Security;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// The per-client allowance for reads: a token bucket per client (<see cref="ClientBuckets.ClientOf"/>) of
/// <c>RateLimiting:ReadBurst</c> permits refilled at <c>RateLimiting:ReadPermitsPerSecond</c>, one permit per
/// <c>GET</c> or <c>HEAD</c> under <c>/api/</c> or the dashboard's <c>/dashboard/api/</c>. Each of those reads
/// PostgreSQL or RabbitMQ's management API, so one key listing jobs in a loop could otherwise starve every other
/// client. The buckets are not the submissions' (<see cref="SubmissionRateLimiter"/>): a client polling its jobs
/// keeps its submissions, and the other way round. Probes, scrapes, the API description and the dashboard's page
/// and assets take none: none of them reads the database for a caller.
/// </summary>
/// <remarks>
/// Checked after authorization, so a read is counted against the key (or session) that made it, and a request
/// refused as unauthenticated takes nothing (unknown keys have their own throttle, <see cref="AuthThrottle"/>).
/// </remarks>
internal sealed class ReadRateLimiter(IOptions<RateLimitingOptions> options, RateLimitRefusals refusals) : IAsyncDisposable
{
    private readonly ClientBuckets _buckets = new(options.Value.Enabled, options.Value.ReadPermitsPerSecond, options.Value.ReadBurst);

    /// <summary>Whether <paramref name="request"/> is a read that takes a permit.</summary>
    public static bool IsLimitedRead(HttpRequest request) =>
        (HttpMethods.IsGet(request.Method) || HttpMethods.IsHead(request.Method))
        && (request.Path.StartsWithSegments("/api", StringComparison.OrdinalIgnoreCase)
            || request.Path.StartsWithSegments(DashboardPaths.DataRoot, StringComparison.OrdinalIgnoreCase));

    /// <summary>
    /// Takes the read's permit; null when there was one, else the 429 to answer (counted in
    /// <see cref="RateLimitRefusals"/>) whose <c>Retry-After</c> is the time until the next permit.
    /// </summary>
    public IResult? Refusal(HttpContext http)
    {
        var client = ClientBuckets.ClientOf(http);
        if (_buckets.TryTake(client, 1))
        {
            return null;
        }

        refusals.Refused(RateLimitRefusals.Read);
        return RetryAfterResponses.TooManyRequests(http, _buckets.WaitFor(client, 1), "reads");
    }

    public ValueTask DisposeAsync() => _buckets.DisposeAsync();
}
