using System.Globalization;
using System.Text.Json;
using Conveyor.Storage;
using Conveyor.Worker.Messaging;
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

    /// <summary>
    /// The most a stored copy's headers take as the dispatcher publishes them (an AMQP field table):
    /// half of RabbitMQ's default frame, so the copy fits with room to spare.
    /// </summary>
    public const int MaxStoredHeaderBytes = 65_536;

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
        var headers = StorableHeaders(RedeliveryHeaders.ForStorage(received.TransportHeaders.GetAll()), extraHeaders);
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
    /// The received headers with <paramref name="extraHeaders"/> over them, within
    /// <see cref="MaxStoredHeaderBytes"/>: the largest received ones are dropped (and named in
    /// <see cref="OversizedHeaders.DroppedHeader"/>) when they take more. A header near the limit when
    /// it arrived can take more once stored (bytes that are no UTF-8 come back as three each), and a row
    /// whose headers no longer fit in a frame could never be published.
    /// </summary>
    internal static Dictionary<string, object?> StorableHeaders(
        IReadOnlyDictionary<string, string> received, IReadOnlyDictionary<string, string> extraHeaders)
    {
        var headers = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (key, value) in received)
        {
            headers[key] = value;
        }

        foreach (var (key, value) in extraHeaders)
        {
            headers[key] = value;
        }

        OversizedHeaders.DropLargest(headers, MaxStoredHeaderBytes, extraHeaders.Keys.ToHashSet(StringComparer.Ordinal));
        return headers;
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
