using System.Globalization;
using System.Text.Json;
using Conveyor.Storage;
using MassTransit;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Stores a received message to be published again later (plugin-free delayed redelivery). The row
/// commits before the original is acked, so a crash in between leaves a duplicate, never a loss;
/// the inbox absorbs the duplicate.
/// </summary>
public sealed class RedeliveryStore(IDbContextFactory<ConveyorDbContext> dbFactory, TimeProvider time)
{
    /// <summary>The NOTIFY channel that wakes the dispatchers.</summary>
    public const string Channel = "conveyor_scheduled";

    /// <param name="dedupeKey">Unique per intended publish: storing it twice keeps the first.</param>
    /// <param name="extraHeaders">Headers to set on the copy (overriding what it carried).</param>
    public async Task ScheduleAsync(
        ReceiveContext received,
        Guid? messageId,
        string destination,
        string dedupeKey,
        int attempt,
        DateTimeOffset dueAt,
        IReadOnlyDictionary<string, string> extraHeaders,
        CancellationToken cancellationToken)
    {
        var headers = RedeliveryHeaders.ForStorage(received.TransportHeaders.GetAll());
        foreach (var (key, value) in extraHeaders)
        {
            headers[key] = value;
        }

        var contentType = StorableContentType(received.ContentType);
        var body = received.Body.GetBytes();
        var headersJson = JsonSerializer.Serialize(headers);
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            WITH stored AS (
                INSERT INTO scheduled_messages (dedupe_key, destination, due_at, attempt, content_type, message_id, headers, body, created_at)
                VALUES ({dedupeKey}, {destination}, {dueAt}, {attempt}, {contentType}, {messageId?.ToString()}, CAST({headersJson} AS jsonb), {body}, {time.GetUtcNow()})
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING id)
            SELECT pg_notify({Channel}, {dueAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)}) FROM stored
            """, cancellationToken);
    }

    /// <summary>
    /// The content type as received, or only its media type (which is what selects the deserializer)
    /// when its parameters make it longer than the column: a producer's odd header must not make the
    /// message impossible to store.
    /// </summary>
    internal static string? StorableContentType(System.Net.Mime.ContentType? contentType)
    {
        var text = contentType?.ToString();
        const int max = Conveyor.Storage.Redelivery.ScheduledMessage.MaxContentTypeLength;
        return text is { Length: > max } ? contentType!.MediaType[..Math.Min(contentType.MediaType.Length, max)] : text;
    }
}
