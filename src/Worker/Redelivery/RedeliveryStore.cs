using System.Text.Json;
using Conveyor.Storage;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Messaging;
using MassTransit;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Stores a received message to be published again later (plugin-free delayed redelivery). The row
/// commits before the original is acked, so a crash in between leaves a duplicate, never a loss;
/// the inbox absorbs the duplicate.
/// </summary>
public sealed class RedeliveryStore(IDbContextFactory<ConveyorDbContext> dbFactory)
{
    /// <summary>The NOTIFY channel that wakes the dispatchers.</summary>
    public const string Channel = "conveyor_scheduled";

    /// <summary>
    /// The most a stored copy's headers take as the dispatcher publishes them (an AMQP field table):
    /// half of RabbitMQ's default frame, so the copy fits with room to spare.
    /// </summary>
    public const int MaxStoredHeaderBytes = 65_536;

    /// <summary>Stores a copy no job waits for (a lease deferral), see the overload with a job.</summary>
    public Task<DateTimeOffset> ScheduleAsync(
        ReceiveContext received,
        Guid? messageId,
        string destination,
        string dedupeKey,
        int attempt,
        TimeSpan delay,
        IReadOnlyDictionary<string, string> extraHeaders,
        CancellationToken cancellationToken) =>
        ScheduleAsync(received, messageId, destination, dedupeKey, attempt, delay, extraHeaders, job: null, cancellationToken);

    /// <param name="dedupeKey">Unique per intended publish: storing it twice keeps the first.</param>
    /// <param name="extraHeaders">Headers to set on the copy (overriding what it carried).</param>
    /// <param name="job">
    /// The job that waits for this copy (a delayed redelivery), or null when none does (a lease
    /// deferral: the job runs on another worker's live lease, and that run settles it). Its row id and
    /// attempts are stored with the copy, so a copy that can never be published dead-letters the job
    /// it was stored for (<see cref="RedeliveryDispatcher"/>).
    /// </param>
    /// <param name="delay">
    /// How long from now the copy is due, counted on the database's clock, as every dispatcher reads
    /// due times: a pod whose clock is off would otherwise store copies due early or late for the
    /// others (<see cref="RedeliveryDispatcher"/>).
    /// </param>
    /// <returns>When the copy is due, by the database's clock.</returns>
    public async Task<DateTimeOffset> ScheduleAsync(
        ReceiveContext received,
        Guid? messageId,
        string destination,
        string dedupeKey,
        int attempt,
        TimeSpan delay,
        IReadOnlyDictionary<string, string> extraHeaders,
        JobRef? job,
        CancellationToken cancellationToken)
    {
        var headers = StorableHeaders(RedeliveryHeaders.ForStorage(received.TransportHeaders.GetAll()), extraHeaders);
        var contentType = StorableContentType(received.ContentType);
        var body = received.Body.GetBytes();
        var headersJson = JsonSerializer.Serialize(headers);
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        // The job's row is found by its kind and business key, as every status write finds it, never by
        // the job id the message claims (a header any sender can set): a copy of one job must not
        // dead-letter another. None found (no job, or its row is gone): stored without one.
        var (jobKind, businessKey) = job is { } waiting ? (waiting.Kind, waiting.BusinessKey) : (null, null);
        // The NOTIFY's payload is the due time in Unix milliseconds; count() makes it run for the stored row.
        // Not composed (no SingleAsync): EF would wrap the statement, and a data-modifying WITH cannot be nested.
        var due = await db.Database.SqlQuery<DateTimeOffset>($"""
            WITH job AS (
                SELECT id, attempts FROM jobs WHERE kind = {jobKind} AND business_key = {businessKey}),
            due AS (
                SELECT clock_timestamp() AS stored_at, clock_timestamp() + {delay} AS due_at),
            stored AS (
                INSERT INTO scheduled_messages (dedupe_key, destination, due_at, attempt, content_type, message_id, headers, body, created_at, job_id, job_attempts)
                SELECT {dedupeKey}, {destination}, due.due_at, {attempt}, {contentType}, {messageId?.ToString()}, CAST({headersJson} AS jsonb), {body}, due.stored_at,
                       (SELECT id FROM job), (SELECT attempts FROM job)
                  FROM due
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING due_at)
            SELECT due.due_at AS "Value"
              FROM due, (SELECT count(pg_notify({Channel}, floor(EXTRACT(EPOCH FROM stored.due_at) * 1000)::bigint::text)) FROM stored) AS notified
            """).ToListAsync(cancellationToken);
        return due.Single();
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
            // Ours replace a received header of the same name in any casing: headers are read back
            // ignoring case, first match first, and PostgreSQL's jsonb orders 'CONVEYOR-…' before
            // 'Conveyor-…', so a sender's upper-cased copy of the seal would be read instead of ours,
            // and every redelivery would count as the first.
            foreach (var shadow in headers.Keys.Where(k => string.Equals(k, key, StringComparison.OrdinalIgnoreCase)).ToList())
            {
                headers.Remove(shadow);
            }

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
