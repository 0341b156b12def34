using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Retention;

/// <summary>
/// Section <c>Retention</c>. Keep jobs at least as long as inbox rows: once an inbox row is swept, a late
/// replay of that message is still recognised by its job row's final status, until the job row goes
/// too (the deduplication horizon, README). The sweep never deletes a job while an inbox row of its
/// command or a stored command of it remains (see <see cref="RetentionSweeper"/>); this check keeps the
/// ordinary case from depending on that: a job swept before its message's inbox row would leave a
/// resubmission of its business key <c>queued</c>, every copy of it acked as a duplicate unrun.
/// Checked at start-up while retention is enabled.
/// </summary>
public sealed class RetentionOptions : IValidatableObject
{
    public const string SectionName = "Retention";

    public bool Enabled { get; set; } = true;

    /// <summary>Processed inbox rows older than this are deleted.</summary>
    [Range(1, 100_000)]
    public int InboxHours { get; set; } = 7 * 24;

    /// <summary>Finished jobs (succeeded, dead-lettered, cancelled) older than this are deleted.</summary>
    [Range(1, 100_000)]
    public int JobHours { get; set; } = 30 * 24;

    /// <summary>
    /// Finished error-queue operations (the audit log) older than this are deleted, and so are operations
    /// still marked running that have recorded no progress for this long (their process died).
    /// </summary>
    [Range(1, 100_000)]
    public int AuditHours { get; set; } = 90 * 24;

    /// <summary>Rows per DELETE, so no sweep holds locks or bloats WAL for long.</summary>
    [Range(1, 100_000)]
    public int BatchSize { get; set; } = 1_000;

    [Range(1, 86_400)]
    public int IntervalSeconds { get; set; } = 300;

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (Enabled && JobHours < InboxHours)
        {
            yield return new ValidationResult(
                $"{SectionName}:{nameof(JobHours)} ({JobHours}) must be at least {SectionName}:{nameof(InboxHours)} ({InboxHours}): "
                + "a job swept before its message's inbox row leaves a resubmission of its business key queued for good, "
                + "its copies acked as duplicates unrun.",
                [nameof(JobHours), nameof(InboxHours)]);
        }
    }
}
