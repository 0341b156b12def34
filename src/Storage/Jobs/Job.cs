namespace Conveyor.Storage.Jobs;

/// <summary>One row per job, whoever submitted it; what <c>GET /api/jobs/{id}</c> shows.</summary>
public sealed class Job
{
    public Guid Id { get; set; }

    /// <summary>One of <see cref="Contracts.JobKinds"/>.</summary>
    public required string Kind { get; set; }

    /// <summary>The command's business idempotency key (PaymentId, WebhookId, ReportId).</summary>
    public required string BusinessKey { get; set; }

    /// <summary>One of <see cref="JobStatus"/>.</summary>
    public required string Status { get; set; }

    /// <summary>Consume attempts so far, retries and redeliveries included.</summary>
    public int Attempts { get; set; }

    public string? LastError { get; set; }

    /// <summary>0..100 for jobs that report progress.</summary>
    public int? Progress { get; set; }

    /// <summary>The HTTP <c>Idempotency-Key</c> the job was submitted with, if any.</summary>
    public string? IdempotencyKey { get; set; }

    /// <summary>SHA-256 of the submitted body, to refuse a reused Idempotency-Key with another body.</summary>
    public string? RequestHash { get; set; }

    /// <summary>
    /// The submitted command's <see cref="PayloadFingerprint"/> (Api submissions only): a submission that
    /// names this job's business id with another command is refused, not answered with this job (ADR 0011).
    /// </summary>
    public byte[]? PayloadHash { get; set; }

    /// <summary>
    /// The fingerprint of the command this job was first created for, kept once a corrected command
    /// took the job over after it was dead-lettered (ADR 0011, amendment); null until then. An external
    /// call keyed by the business id alone (the payment gateway's <c>Idempotency-Key</c>) takes the
    /// corrected command's fingerprint into its key, so the gateway does not answer it with what it
    /// answered the first command.
    /// </summary>
    public byte[]? OriginalPayloadHash { get; set; }

    /// <summary>
    /// The body the job was submitted with through the Api, kept while the job waits for its first
    /// delivery: the Api republishes a job that stays <c>queued</c> without a command (ADR 0007). A
    /// worker clears it when it receives the command, a cancel when it cancels the job; null for
    /// jobs published directly and for scheduled ones (their command is stored whole).
    /// </summary>
    public byte[]? RequestBody { get; set; }

    public DateTimeOffset CreatedAt { get; set; }

    public DateTimeOffset UpdatedAt { get; set; }

    public DateTimeOffset? FinishedAt { get; set; }

    /// <summary>When the next delayed redelivery is due, while the status is retry-scheduled.</summary>
    public DateTimeOffset? NextAttemptAt { get; set; }
}
