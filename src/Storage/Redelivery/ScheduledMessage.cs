namespace Conveyor.Storage.Redelivery;

/// <summary>
/// A message waiting to be published again: a delayed redelivery after a transient failure, a
/// deferral while another pod holds a long job's lease, or a job scheduled for later. The
/// dispatcher publishes it to <see cref="Destination"/> when <see cref="DueAt"/> passes and deletes
/// it after the broker confirms.
/// </summary>
public sealed class ScheduledMessage
{
    public long Id { get; set; }

    /// <summary>
    /// How a job scheduled for later keys its stored command: this and the job's id (<c>D</c> format),
    /// one row per job. The Api writes it; the dispatcher and the retention sweep find a row's job by it
    /// when the row was stored before <see cref="JobId"/> was.
    /// </summary>
    public const string ScheduledJobKeyPrefix = "job:";

    /// <summary>Unique: storing the same redelivery twice (two failing copies) keeps one.</summary>
    public required string DedupeKey { get; set; }

    /// <summary>The queue to publish to (through the default exchange).</summary>
    public required string Destination { get; set; }

    public DateTimeOffset DueAt { get; set; }

    /// <summary>Redelivery attempt this publish starts (1 = first redelivery).</summary>
    public int Attempt { get; set; }

    /// <summary>The length of the <c>content_type</c> column.</summary>
    public const int MaxContentTypeLength = 200;

    public string? ContentType { get; set; }

    public string? MessageId { get; set; }

    /// <summary>Transport headers as a JSON object of strings, broker headers such as x-death removed.</summary>
    public required string Headers { get; set; }

    public required byte[] Body { get; set; }

    public DateTimeOffset CreatedAt { get; set; }

    /// <summary>
    /// The row id of the job this message would run, as the writer found it (never a header, which any
    /// sender can set); null for a message of no job, a lease deferral, and rows stored before the
    /// column existed. A row that can never be published dead-letters this job (see
    /// <see cref="JobAttempts"/>).
    /// </summary>
    public Guid? JobId { get; set; }

    /// <summary>
    /// The job's <c>attempts</c> when this row was stored. The job is waiting for this row only while it
    /// still has that count: any later delivery of its command claims it and counts one more, so a row
    /// that has fallen behind can no longer dead-letter the job.
    /// </summary>
    public int? JobAttempts { get; set; }

    /// <summary>The length of the <c>refusal</c> column.</summary>
    public const int MaxRefusalLength = 1000;

    /// <summary>
    /// When the broker first refused (or failed) to take this row, kept across every later try: the
    /// dispatcher moves <see cref="DueAt"/> on to the next try, so without it a row refused for good
    /// (its queue deleted) would never look overdue. Null while no publish of it has failed.
    /// </summary>
    public DateTimeOffset? FirstRefusedAt { get; set; }

    /// <summary>Why the latest publish failed (the broker's answer), while <see cref="FirstRefusedAt"/> is set.</summary>
    public string? Refusal { get; set; }
}
