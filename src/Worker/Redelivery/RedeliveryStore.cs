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
    /// The most a stored copy's headers take as the dispatcher publishes them (an AMQP field table), the
    /// worker's own headers aside (<see cref="RedeliveryHeaders.CountedBytes"/>): half of RabbitMQ's
    /// default frame, so the copy fits with room to spare.
    /// </summary>
    public const int MaxStoredHeaderBytes = 65_536;

    /// <summary>
    /// Stores a copy no job waits for (a lease deferral), see the overload with a job. Its headers are
    /// kept within <see cref="MaxStoredHeaderBytes"/>, as the endpoint's own limit is not known here.
    /// </summary>
    public async Task<DateTimeOffset> ScheduleAsync(
        ReceiveContext received,
        Guid? messageId,
        string destination,
        string dedupeKey,
        int attempt,
        TimeSpan delay,
        IReadOnlyDictionary<string, string> extraHeaders,
        CancellationToken cancellationToken) =>
        (await ScheduleAsync(received, messageId, destination, dedupeKey, attempt, delay, extraHeaders, job: null, MaxStoredHeaderBytes, markWaiting: null, cancellationToken)).DueAt;

    /// <param name="dedupeKey">
    /// Unique per intended publish: storing it twice keeps the first, which then stands for the job's
    /// latest attempt (see the statement) and whose due time is returned.
    /// </param>
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
    /// <param name="maxHeaderBytes">
    /// The destination endpoint's <c>MaxHeaderBytes</c>, which the copy must meet when it comes back:
    /// see <see cref="StorableHeaders"/>.
    /// </param>
    /// <param name="markWaiting">
    /// Shows the job waiting for the copy, given the due time returned; run in the transaction that stores
    /// the copy. A dispatcher sees the row only once it commits, so it finds the job waiting for it: a copy
    /// due at once that can never be published must find the job in a waiting status to dead-letter it
    /// (<see cref="RedeliveryDispatcher"/>). Written after the row committed, the status could come after
    /// the dispatcher had given up on the job as still running, and leave it waiting for a row that was
    /// gone. A failure of either rolls both back, and the message is handled as for a store that failed.
    /// </param>
    /// <returns>
    /// When the copy (or the one stored before under <paramref name="dedupeKey"/>) is due, by the database's clock, and
    /// whether this call stored a row: false when the copy folded into one stored before (another copy of the command
    /// failed at the same count), which stays the only redelivery scheduled.
    /// </returns>
    public async Task<ScheduledCopy> ScheduleAsync(
        ReceiveContext received,
        Guid? messageId,
        string destination,
        string dedupeKey,
        int attempt,
        TimeSpan delay,
        IReadOnlyDictionary<string, string> extraHeaders,
        JobRef? job,
        long maxHeaderBytes,
        Func<ConveyorDbContext, DateTimeOffset, Task>? markWaiting,
        CancellationToken cancellationToken)
    {
        var headers = StorableHeaders(SentHeaders(received), extraHeaders, maxHeaderBytes);
        var contentType = StorableContentType(received.ContentType);
        var body = received.Body.GetBytes();
        var headersJson = JsonSerializer.Serialize(headers);
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        await using var transaction = markWaiting is null ? null : await db.Database.BeginTransactionAsync(cancellationToken);
        // The job's row is found by its kind and business key, as every status write finds it, never by
        // the job id the message claims (a header any sender can set): a copy of one job must not
        // dead-letter another. None found (no job, or its row is gone): stored without one.
        var (jobKind, businessKey) = job is { } waiting ? (waiting.Kind, waiting.BusinessKey) : (null, null);
        // The NOTIFY's payload is the due time in Unix milliseconds; count() makes it run for the stored row.
        // A copy already stored under this key (another copy of the command failed first, and its
        // redelivery waits) stays the only one, but it now stands for this attempt: it takes the job's
        // attempts as this failure left them, and its due time is the one returned. Kept at the first
        // copy's count, it no longer dead-lettered the job when it could not be published (nor showed
        // the job a refusal), and the job showed a due time no row had. A row a dispatcher holds (it
        // is being published now) is passed over (SKIP LOCKED), not waited for.
        // Not composed (no SingleAsync): EF would wrap the statement, and a data-modifying WITH cannot be nested.
        var due = await db.Database.SqlQuery<ScheduledCopy>($"""
            WITH job AS (
                SELECT id, attempts FROM jobs WHERE kind = {jobKind} AND business_key = {businessKey}),
            now AS (
                SELECT clock_timestamp() AS at),
            due AS (
                -- One reading of the clock: the due time is exactly the store time plus the delay.
                SELECT now.at AS stored_at, now.at + {delay} AS due_at FROM now),
            stored AS (
                INSERT INTO scheduled_messages (dedupe_key, destination, due_at, attempt, content_type, message_id, headers, body, created_at, job_id, job_attempts)
                SELECT {dedupeKey}, {destination}, due.due_at, {attempt}, {contentType}, {messageId?.ToString()}, CAST({headersJson} AS jsonb), {body}, due.stored_at,
                       (SELECT id FROM job), (SELECT attempts FROM job)
                  FROM due
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING due_at),
            adopted AS (
                UPDATE scheduled_messages s SET job_attempts = job.attempts
                  FROM job
                 WHERE s.id = (SELECT e.id FROM scheduled_messages e WHERE e.dedupe_key = {dedupeKey} FOR UPDATE SKIP LOCKED)
                   AND s.job_id = job.id
                RETURNING s.due_at)
            SELECT COALESCE((SELECT stored.due_at FROM stored), (SELECT adopted.due_at FROM adopted), due.due_at) AS due_at,
                   EXISTS (SELECT 1 FROM stored) AS stored
              FROM due, (SELECT count(pg_notify({Channel}, floor(EXTRACT(EPOCH FROM stored.due_at) * 1000)::bigint::text)) FROM stored) AS notified
            """).ToListAsync(cancellationToken);
        if (transaction is not null)
        {
            await markWaiting!(db, due.Single().DueAt);
            await transaction.CommitAsync(cancellationToken);
        }

        return due.Single();
    }

    /// <summary>
    /// The headers the copy was sent with, as they can be stored (<see cref="RedeliveryHeaders.ForStorage"/>):
    /// its AMQP header table. MassTransit's transport headers add its view of this one delivery (the
    /// exchange, consumer tag and delivery tag, the message id property), which are no headers of the
    /// message: stored, they became headers of every later copy, and took room under the endpoint's
    /// limit that the message never used. The message id is stored in its own column.
    /// </summary>
    private static Dictionary<string, string> SentHeaders(ReceiveContext received) =>
        received.TryGetPayload(out RabbitMqBasicConsumeContext? amqp)
            ? RedeliveryHeaders.ForStorage(amqp.Properties.Headers ?? new Dictionary<string, object?>())
            : RedeliveryHeaders.ForStorage(received.TransportHeaders.GetAll());

    /// <summary>
    /// The received headers with <paramref name="extraHeaders"/> (the worker's own) over them. The
    /// sender's headers are kept within <paramref name="maxHeaderBytes"/> (at most
    /// <see cref="MaxStoredHeaderBytes"/>), the largest dropped (and named in
    /// <see cref="OversizedHeaders.DroppedHeader"/>) when they take more; the worker's own headers come
    /// on top, uncounted up to <see cref="RedeliveryHeaders.OwnAllowance"/>, as the size check counts
    /// them, and so do an error-queue move's (up to <see cref="RedeliveryHeaders.MoveAllowance"/>). So a
    /// copy that met the endpoint's limit when it arrived meets it when it comes back, with every header
    /// of the sender's, instead of being refused for the worker's bookkeeping, or losing
    /// the sender's largest header to make room for it. A header within the limit when it arrived can
    /// still take more once stored (bytes that are no UTF-8 come back as three each, numbers as text):
    /// such a header is dropped rather than have the copy refused, or unpublishable, when it comes back.
    /// A sender's headers under the worker's own names that take more than their allowance are what
    /// goes first should the whole still be larger than a stored copy may be.
    /// </summary>
    internal static Dictionary<string, object?> StorableHeaders(
        IReadOnlyDictionary<string, string> received, IReadOnlyDictionary<string, string> extraHeaders, long maxHeaderBytes)
    {
        var senders = new Dictionary<string, object?>(StringComparer.Ordinal);
        var own = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (key, value) in received)
        {
            // Ours replace a received header of the same name in any casing: headers are read back
            // ignoring case, first match first, and PostgreSQL's jsonb orders 'CONVEYOR-…' before
            // 'Conveyor-…', so a sender's upper-cased copy of the seal would be read instead of ours,
            // and every redelivery would count as the first.
            if (extraHeaders.Keys.Any(k => string.Equals(k, key, StringComparison.OrdinalIgnoreCase)))
            {
                continue;
            }

            // Times set aside for a webhook origin's limit (and their seal) count within one attempt: a copy stored for
            // another reason (a retry) starts again from none, or a delivery once over the limit would be over it on
            // every redelivery after, just when a failing receiver has a backlog. So do times parked behind another
            // worker's lease (Consumers:<Name>:MaxLeaseDeferrals): a copy parked often, which then ran and failed,
            // would otherwise bring that count to every retry, and go to _error unrun after fewer parks each time.
            if (string.Equals(key, RedeliveryHeaders.OriginDeferrals, StringComparison.OrdinalIgnoreCase)
                || string.Equals(key, RedeliverySeal.OriginDeferralsHeader, StringComparison.OrdinalIgnoreCase)
                || string.Equals(key, RedeliveryHeaders.Deferrals, StringComparison.OrdinalIgnoreCase)
                || string.Equals(key, RedeliverySeal.LeaseDeferralsHeader, StringComparison.OrdinalIgnoreCase))
            {
                continue;
            }

            // The worker's own headers and a move's (on a copy an operator moved back) go on top, as the
            // size check leaves them out. An earlier note of dropped headers stays with the sender's
            // headers, where a new note continues it (and where it is counted, which only leaves more
            // room than needed).
            var isOwn = (RedeliveryHeaders.IsOwn(key) || RedeliveryHeaders.IsMove(key))
                && !string.Equals(key, OversizedHeaders.DroppedHeader, StringComparison.OrdinalIgnoreCase);
            (isOwn ? own : senders)[key] = value;
        }

        OversizedHeaders.DropLargest(senders, Math.Min(maxHeaderBytes, MaxStoredHeaderBytes));
        var headers = new Dictionary<string, object?>(senders, StringComparer.Ordinal);
        foreach (var (key, value) in own)
        {
            headers[key] = value;
        }

        foreach (var (key, value) in extraHeaders)
        {
            headers[key] = value;
        }

        OversizedHeaders.DropLargest(
            headers, MaxStoredHeaderBytes + RedeliveryHeaders.OwnAllowance + RedeliveryHeaders.MoveAllowance, extraHeaders.Keys.ToHashSet(StringComparer.Ordinal));
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

/// <summary>
/// A redelivery as the store left it: when it is due, by the database's clock, and whether this call stored its row
/// (false when it folded into a copy stored before under the same dedupe key, or found that copy being published).
/// </summary>
public sealed record ScheduledCopy(DateTimeOffset DueAt, bool Stored);
