using Conveyor.Contracts;
using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// When submissions are refused because the broker is behind. Environment variables:
/// <c>Backpressure__RefreshMilliseconds</c>, <c>Backpressure__MaxQueueDepth__charge-payment</c>, ...
/// </summary>
public sealed class BackpressureOptions : IValidatableObject
{
    public const string SectionName = "Backpressure";

    /// <summary>How often queue depths and broker alarms are read.</summary>
    [Range(100, 60_000)]
    public int RefreshMilliseconds { get; set; } = 1000;

    /// <summary>Ready messages in a job queue at which its submissions are refused; 0 = no limit.</summary>
    [Range(0, int.MaxValue)]
    public int DefaultMaxQueueDepth { get; set; } = 10_000;

    /// <summary>Per job kind (= queue), overriding <see cref="DefaultMaxQueueDepth"/>.</summary>
    public Dictionary<string, int> MaxQueueDepth { get; set; } = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>The <c>Retry-After</c> of a refused submission.</summary>
    [Range(1, 3600)]
    public int RetryAfterSeconds { get; set; } = 5;

    /// <summary>
    /// Jobs scheduled to run within this many seconds pass the same gate as immediate ones (a full queue's
    /// 429, a broker alarm's 503): they join the queue about as soon, and a client told 429 could otherwise
    /// send the job again with a <c>runAt</c> a second ahead. 0 gates immediate jobs only.
    /// </summary>
    [Range(0, 86_400)]
    public int GateScheduledWithinSeconds { get; set; } = 60;

    public int LimitFor(string kind) =>
        MaxQueueDepth.TryGetValue(kind, out var limit) ? limit : DefaultMaxQueueDepth;

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        foreach (var (kind, limit) in MaxQueueDepth)
        {
            if (!JobKinds.All.Contains(kind, StringComparer.Ordinal))
            {
                yield return new ValidationResult(
                    $"Backpressure:MaxQueueDepth:{kind} names no job kind ({string.Join(", ", JobKinds.All)}).",
                    [nameof(MaxQueueDepth)]);
            }

            if (limit < 0)
            {
                yield return new ValidationResult(
                    $"Backpressure:MaxQueueDepth:{kind} must be 0 (no limit) or more.", [nameof(MaxQueueDepth)]);
            }
        }
    }
}
