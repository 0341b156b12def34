namespace Conveyor.Storage.Operations;

/// <summary>
/// One move or purge on an <c>_error</c>/<c>_skipped</c> queue: its request (who, what, filter),
/// its progress while it runs and its result. The rows are also the audit trail of error-queue work.
/// </summary>
public sealed class ErrorQueueOperation
{
    public Guid Id { get; set; }

    /// <summary>One of <see cref="ErrorQueueOperationKinds"/>.</summary>
    public required string Kind { get; set; }

    /// <summary>The queue messages are taken from.</summary>
    public required string Queue { get; set; }

    /// <summary>
    /// The RabbitMQ vhost of <see cref="Queue"/>: Api deployments on different vhosts may share one
    /// database, and each sees and settles only its own operations. Null for rows recorded before
    /// operations named their vhost, which every deployment sees, as it did then.
    /// </summary>
    public string? VirtualHost { get; set; }

    /// <summary>The queue named in the request; null = each message's original queue.</summary>
    public string? Target { get; set; }

    /// <summary>The filter as requested, a JSON object.</summary>
    public required string Filter { get; set; }

    /// <summary>At most this many messages are moved or purged; null = no limit.</summary>
    public int? Limit { get; set; }

    public bool DryRun { get; set; }

    /// <summary>One of <see cref="ErrorQueueOperationStates"/>.</summary>
    public required string State { get; set; }

    /// <summary>The API key name of whoever asked.</summary>
    public required string RequestedBy { get; set; }

    /// <summary>The client's address as the Api saw it.</summary>
    public string? ClientAddress { get; set; }

    /// <summary>Which process runs (or ran) it: host name and process id.</summary>
    public string? Owner { get; set; }

    /// <summary>Messages in the queue when the operation started; it examines no more than these.</summary>
    public long QueueDepthAtStart { get; set; }

    public long Examined { get; set; }

    /// <summary>Messages that matched the filter (for a dry run: that would be moved or purged).</summary>
    public long Matched { get; set; }

    public long Moved { get; set; }

    public long Purged { get; set; }

    /// <summary>Matched messages that could not be moved (no such target queue, broker refused); they stay.</summary>
    public long Failed { get; set; }

    /// <summary>Messages in the queue when the operation ended.</summary>
    public long? Left { get; set; }

    /// <summary>
    /// Of the jobs named by the messages it selected (moved, purged, or for a dry run would be), how
    /// many have no row in <c>jobs</c> when it ended: swept after <c>Retention:JobHours</c>, so a message
    /// of theirs moved back runs its job again with no deduplication. Null while it runs, or when the
    /// database could not be read.
    /// </summary>
    public long? JobsMissing { get; set; }

    /// <summary>Message ids moved or purged (would be, for a dry run): a JSON array, bounded.</summary>
    public required string MessageIds { get; set; }

    /// <summary>True when more messages were affected than <see cref="MessageIds"/> lists.</summary>
    public bool MessageIdsTruncated { get; set; }

    /// <summary>Messages moved per target queue: a JSON object.</summary>
    public required string Targets { get; set; }

    /// <summary>
    /// Why it failed, or stopped before examining every message; the reasons copies were refused. A
    /// <c>succeeded</c> operation has one only when it did part of its work (the Api shows it as partial),
    /// or when it had more jobs to check than <see cref="JobsMissing"/> counts (a caveat, not partial).
    /// </summary>
    public string? Detail { get; set; }

    public DateTimeOffset CreatedAt { get; set; }

    public DateTimeOffset UpdatedAt { get; set; }

    public DateTimeOffset? FinishedAt { get; set; }
}
