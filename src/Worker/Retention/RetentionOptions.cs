using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Retention;

/// <summary>
/// Section <c>Retention</c>. Keep jobs longer than inbox rows: once an inbox row is swept, a late
/// replay of that message is still recognised by its job row's final status.
/// </summary>
public sealed class RetentionOptions
{
    public const string SectionName = "Retention";

    public bool Enabled { get; set; } = true;

    /// <summary>Processed inbox rows older than this are deleted.</summary>
    [Range(1, 100_000)]
    public int InboxHours { get; set; } = 7 * 24;

    /// <summary>Finished jobs (succeeded, dead-lettered, cancelled) older than this are deleted.</summary>
    [Range(1, 100_000)]
    public int JobHours { get; set; } = 30 * 24;

    /// <summary>Finished error-queue operations (the audit log) older than this are deleted.</summary>
    [Range(1, 100_000)]
    public int AuditHours { get; set; } = 90 * 24;

    /// <summary>Rows per DELETE, so no sweep holds locks or bloats WAL for long.</summary>
    [Range(1, 100_000)]
    public int BatchSize { get; set; } = 1_000;

    [Range(1, 86_400)]
    public int IntervalSeconds { get; set; } = 300;
}
