namespace Conveyor.Storage.Inbox;

/// <summary>
/// A message a consumer has applied. The primary key (consumer, message key) is what makes
/// every handler idempotent: the row commits in the same transaction as the handler's writes.
/// </summary>
public sealed class InboxRecord
{
    public required string ConsumerId { get; set; }

    public required string MessageKey { get; set; }

    public Guid? MessageId { get; set; }

    public DateTimeOffset ReceivedAt { get; set; }

    /// <summary>
    /// What the applied command said (16 bytes of SHA-256 over it, ADR 0011): a later message under the same
    /// key that says something else is a conflict, not a duplicate. Null in rows written before it was kept.
    /// </summary>
    public byte[]? PayloadHash { get; set; }

    /// <summary><c>done</c>, or <c>processing</c> while a long job holds the lease.</summary>
    public string Status { get; set; } = InboxStatus.Done;

    /// <summary>The worker instance that holds a long job's lease.</summary>
    public string? LeaseOwner { get; set; }

    public DateTimeOffset? LeaseExpiresAt { get; set; }
}
