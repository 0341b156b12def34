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
        // The bucket gains a second's permits at once and holds no more than Burst, so a smaller Burst
        // would cap every client at Burst a second, whatever PermitsPerSecond says.
        if (Enabled && Burst < PermitsPerSecond)
        {
            yield return new ValidationResult(
                $"RateLimiting:Burst ({Burst}) must be at least RateLimiting:PermitsPerSecond ({PermitsPerSecond}): " +
                "the bucket is refilled once a second and holds at most Burst permits, so a client could never send more than Burst a second.",
                [nameof(Burst), nameof(PermitsPerSecond)]);
        }

        if (Enabled && ReadBurst < ReadPermitsPerSecond)
        {
            yield return new ValidationResult(
                $"RateLimiting:ReadBurst ({ReadBurst}) must be at least RateLimiting:ReadPermitsPerSecond ({ReadPermitsPerSecond}): " +
                "the bucket is refilled once a second and holds at most ReadBurst permits, so a client could never read more than ReadBurst a second.",
                [nameof(ReadBurst), nameof(ReadPermitsPerSecond)]);
        }
    }
}
