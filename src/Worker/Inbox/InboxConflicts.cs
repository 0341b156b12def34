using Conveyor.Storage;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// Reads the fingerprints of inbox rows a claim found taken (ADR 0011). Run after the claim, in a
/// statement of its own: under READ COMMITTED it sees the row of a copy whose transaction the claim
/// waited for, which the claim's own snapshot does not.
/// </summary>
public static partial class InboxConflicts
{
    /// <summary>Logs and counts a conflict; the exception to throw, which sends the message to <c>_error</c>.</summary>
    public static IdempotencyConflictException Found(JobMetrics metrics, ILogger logger, string consumerId, string key, Guid? messageId, byte[]? applied, byte[]? arrived)
    {
        LogConflict(logger, consumerId, key, messageId, PayloadFingerprint.Describe(applied), PayloadFingerprint.Describe(arrived));
        metrics.Conflict(consumerId);
        return new IdempotencyConflictException(consumerId, key, applied, arrived);
    }

    /// <summary>One primary-key probe per key (LATERAL, so no plan reads the consumer's whole inbox, ADR 0010).</summary>
    public static async Task<Dictionary<string, byte[]?>> StoredFingerprintsAsync(
        ConveyorDbContext db, string consumerId, IReadOnlyCollection<string> keys, CancellationToken cancellationToken)
    {
        var distinct = keys.Distinct(StringComparer.Ordinal).ToArray();
        var rows = await db.Database.SqlQuery<StoredFingerprint>($"""
            SELECT k.message_key AS key, i.payload_hash AS fingerprint
              FROM unnest({distinct}::text[]) AS k(message_key)
             CROSS JOIN LATERAL (
                   SELECT payload_hash FROM inbox WHERE consumer_id = {consumerId} AND message_key = k.message_key LIMIT 1) i
            """).ToListAsync(cancellationToken);
        return rows.ToDictionary(r => r.Key, r => r.Fingerprint, StringComparer.Ordinal);
    }

    /// <summary>
    /// The stored fingerprint of one taken key, through the same per-key probe; null, without a query,
    /// when the message has no fingerprint of its own to compare with it.
    /// </summary>
    public static async Task<byte[]?> StoredFingerprintAsync(
        ConveyorDbContext db, string consumerId, string key, byte[]? arrived, CancellationToken cancellationToken) =>
        arrived is null ? null : (await StoredFingerprintsAsync(db, consumerId, [key], cancellationToken)).GetValueOrDefault(key);

    /// <summary>Removes inbox rows this transaction inserted for messages found in conflict with their job (one probe per key).</summary>
    public static Task RemoveRowsAsync(ConveyorDbContext db, string consumerId, string[] keys, CancellationToken cancellationToken) =>
        db.Database.ExecuteSqlAsync($"""
            DELETE FROM inbox
             WHERE ctid = ANY (ARRAY(
                   SELECT i.ctid FROM unnest({keys}::text[]) AS k(message_key)
                    CROSS JOIN LATERAL (
                          SELECT ctid FROM inbox WHERE consumer_id = {consumerId} AND message_key = k.message_key LIMIT 1) i))
            """, cancellationToken);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Key {MessageKey} of {ConsumerId} was applied already from a command with other content ({Applied} applied, {Arrived} in message {MessageId}); the message goes to the error queue unapplied")]
    private static partial void LogConflict(ILogger logger, string consumerId, string messageKey, Guid? messageId, string applied, string arrived);

    private sealed record StoredFingerprint(string Key, byte[]? Fingerprint);
}
