using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// Per-client limits on job submissions and, separately, on reads (a token bucket per API-key name, else per remote
/// address, for each). Environment variables: <c>RateLimiting__Enabled</c>, <c>RateLimiting__PermitsPerSecond</c>,
/// <c>RateLimiting__Burst</c>, <c>RateLimiting__ReadPermitsPerSecond</c>, <c>RateLimiting__ReadBurst</c>.
/// </summary>
public sealed class RateLimitingOptions : IValidatableObject
{
    public const string SectionName = "RateLimiting";

    /// <summary>False: neither submissions nor reads are limited.</summary>
    public bool Enabled { get; set; } = true;

    /// <summary>Sustained submissions per second per client.</summary>
    [Range(1, 1_000_000)]
    public int PermitsPerSecond { get; set; } = 200;

    /// <summary>Submissions a client may make at once after a quiet spell (the bucket's size); at least <see cref="PermitsPerSecond"/>.</summary>
    [Range(1, 1_000_000)]
    public int Burst { get; set; } = 400;

    /// <summary>Sustained reads (<c>GET</c>/<c>HEAD</c> under <c>/api/</c> and <c>/dashboard/api/</c>) per second per client.</summary>
    [Range(1, 1_000_000)]
    public int ReadPermitsPerSecond { get; set; } = 100;

    /// <summary>Reads a client may make at once after a quiet spell; at least <see cref="ReadPermitsPerSecond"/>.</summary>
    [Range(1, 1_000_000)]
    public int ReadBurst { get; set; } = 200;

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (!Enabled)
        {
            yield break;
        }

        if (BurstBelowRate(nameof(Burst), Burst, nameof(PermitsPerSecond), PermitsPerSecond, "send") is { } submissions)
        {
            yield return submissions;
        }

        if (BurstBelowRate(nameof(ReadBurst), ReadBurst, nameof(ReadPermitsPerSecond), ReadPermitsPerSecond, "read") is { } reads)
        {
            yield return reads;
        }
    }

    /// <summary>
    /// The refusal of a bucket smaller than a second's permits, or null. The bucket gains a second's permits at once and
    /// holds no more than its burst, so a smaller burst would cap every client at that many a second, whatever the rate says.
    /// </summary>
    private static ValidationResult? BurstBelowRate(string burstName, int burst, string rateName, int rate, string does) =>
        burst >= rate
            ? null
            : new ValidationResult(
                $"{SectionName}:{burstName} ({burst}) must be at least {SectionName}:{rateName} ({rate}): " +
                $"the bucket is refilled once a second and holds at most {burstName} permits, so a client could never {does} more than {burstName} a second.",
                [burstName, rateName]);
}
