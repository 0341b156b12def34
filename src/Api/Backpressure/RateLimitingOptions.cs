using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// Per-client limit on job submissions (a token bucket per API-key name, else per remote address).
/// Environment variables: <c>RateLimiting__Enabled</c>, <c>RateLimiting__PermitsPerSecond</c>, <c>RateLimiting__Burst</c>.
/// </summary>
public sealed class RateLimitingOptions
{
    public const string SectionName = "RateLimiting";

    public bool Enabled { get; set; } = true;

    /// <summary>Sustained submissions per second per client.</summary>
    [Range(1, 1_000_000)]
    public int PermitsPerSecond { get; set; } = 200;

    /// <summary>Submissions a client may make at once after a quiet spell (the bucket's size).</summary>
    [Range(1, 1_000_000)]
    public int Burst { get; set; } = 400;
}
