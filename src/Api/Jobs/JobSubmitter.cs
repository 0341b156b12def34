using Conveyor.Api.Hosting;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using MassTransit;
using Npgsql;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;

namespace Conveyor.Api.Jobs;

internal enum SubmitStatus
{
    /// <summary>A new job row was committed and its command confirmed by the broker.</summary>
    Created,

    /// <summary>The same job was submitted before (same Idempotency-Key and body, or same business id).</summary>
    Duplicate,

    /// <summary>The Idempotency-Key was used before with another body or kind.</summary>
    KeyReused,

    /// <summary>
    /// The business id names a job submitted before with another command (ADR 0011): refused, never
    /// answered with that job, whose command the client did not send. <see cref="SubmitResult.Job"/> is that job.
    /// </summary>
    ContentConflict,

    /// <summary>Another request for the same job is half-way: it holds the key but its row is gone again.</summary>
    InFlight,

    /// <summary>The broker did not confirm the command in time; the job row was removed again.</summary>
    PublishFailed,

    /// <summary>
    /// The request's <c>runAt</c> is past or too far ahead and no job was submitted before for it (same
    /// Idempotency-Key and body, or same business id): a new job with that time is refused (400).
    /// </summary>
    RunAtOutsideWindow,

    /// <summary>
    /// The database could not be reached for this job (a job of a batch: a single submission lets the
    /// exception answer 503). Whether its row was committed is unknown; sending it again is safe.
    /// </summary>
    DatabaseUnavailable,

    /// <summary>
    /// The request repeats a job whose answer would publish its command again (<see cref="JobSubmitter.SubmitAsync"/>
    /// without <c>publishRepeats</c>: the backpressure gate refuses the kind now); nothing was published. Refused as the
    /// gate refuses a new job; <see cref="SubmitResult.Job"/> is that job.
    /// </summary>
    WouldPublish,
}

internal readonly record struct SubmitResult(SubmitStatus Status, Job? Job = null);

/// <summary>
/// Records a job and publishes its command: the row is committed first, then the command is
/// published with the job id and confirmed, so a worker never sees a command whose row is missing.
/// </summary>
internal sealed class JobSubmitter(
    IDbContextFactory<ConveyorDbContext> dbFactory,
    JobRows rows,
    SubmissionMetrics metrics,
    IPublishEndpoint publishEndpoint,
    IOptions<RabbitMqOptions> rabbitMq,
    IOptions<JobListingOptions> listing,
    IdleTransactions idleTransactions,
    WebhookUrlRules webhookUrls,
    TimeProvider clock,
    ILogger<JobSubmitter> logger)
{
    /// <summary>Long enough to remove a row on a healthy database; not tied to the request, which may be gone.</summary>
    internal static readonly TimeSpan CleanupTimeout = TimeSpan.FromSeconds(10);

    /// <param name="body">The body <paramref name="request"/> was parsed from, as it arrived.</param>
    /// <param name="publishRepeats">
    /// False while the backpressure gate refuses the kind: a request that repeats a job whose answer would publish its
    /// command again (<see cref="MayStillBePublishing"/>, <see cref="MayBeUnpublished"/>) publishes nothing and is
    /// answered <see cref="SubmitStatus.WouldPublish"/>. A request scheduled for later, or whose <c>runAt</c> has passed,
    /// passes no gate of its own, yet repeats a job submitted to run now as well as any other request does.
    /// </param>
    public async Task<SubmitResult> SubmitAsync(
        JobRequest request, string? idempotencyKey, byte[] body, bool publishRepeats, CancellationToken cancellationToken)
    {
        // PostgreSQL keeps microseconds: the row's updated_at must read back equal to this value, which
        // the removal of an unpublished row compares with (RemoveUnpublishedAsync).
        var now = ToMicroseconds(clock.GetUtcNow());
        var requestHash = RequestHash(body);
        if (request.RunAtOutsideWindow)
        {
            // A repeat of a request accepted while its time was ahead (its answer lost, say) gets its job
            // as any repeat does (a job still publishing secured first); a new job is never made with a
            // time it cannot have.
            return await AnswerRepeatAsync(request, idempotencyKey, requestHash, now, publishRepeats, cancellationToken)
                ?? new SubmitResult(SubmitStatus.RunAtOutsideWindow);
        }

        var job = new Job
        {
            Id = Guid.CreateVersion7(now),
            Kind = request.Kind,
            BusinessKey = request.BusinessKey,
            Status = request.RunAt is null ? JobStatus.Queued : JobStatus.Scheduled,
            Attempts = 0,
            IdempotencyKey = idempotencyKey,
            RequestHash = requestHash,
            PayloadHash = request.Fingerprint,
            // A scheduled job's command is stored whole, with its row (TryInsertScheduledAsync).
            RequestBody = request.RunAt is null ? body : null,
            CreatedAt = now,
            UpdatedAt = now,
            NextAttemptAt = request.RunAt,
        };

        // Insert first: a new job, the common case, costs one statement; a repeated submission, the
        // rare case, pays for reading the job it repeats.
        bool inserted;
        var rowStarted = Stopwatch.GetTimestamp();
        try
        {
            inserted = request.RunAt is { } runAt
                ? await TryInsertScheduledAsync(job, request, runAt, now, cancellationToken)
                : await rows.TryInsertAsync(job, cancellationToken);
        }
        catch (Exception)
        {
            metrics.Row(job.Kind, rowStarted, "failed");
            throw;
        }

        metrics.Row(job.Kind, rowStarted, inserted ? "inserted" : "exists");
        if (!inserted)
        {
            // The job that holds the key was committed; none found means its publish failed since and
            // its row was removed again, so the client retries.
            return await AnswerRepeatAsync(request, idempotencyKey, requestHash, now, publishRepeats, cancellationToken)
                ?? new SubmitResult(SubmitStatus.InFlight);
        }

        if (request.RunAt is { } scheduledFor)
        {
            JobsLog.JobScheduled(logger, job.Id, job.Kind, job.BusinessKey, scheduledFor);
            return new SubmitResult(SubmitStatus.Created, job);
        }

        if (await TryPublishAsync(request, job.Id, cancellationToken))
        {
            JobsLog.JobQueued(logger, job.Id, job.Kind, job.BusinessKey);
            return new SubmitResult(SubmitStatus.Created, job);
        }

        // A repeat takes the row for settled once the publish budget has passed since the row's created_at
        // (AnswerRepeatAsync): the removal must end by then, counted from that instant, not from the end
        // of an insert that may have waited (a database stall).
        return await RemoveUnpublishedAsync(job, removeBy: now + PublishBudget);
    }

    /// <summary>
    /// Commits the job row and its stored command in one transaction, for the worker's dispatcher to
    /// publish when due (the NOTIFY wakes it when the transaction commits). False, with nothing
    /// written, when a job with one of the row's unique keys exists.
    /// </summary>
    private async Task<bool> TryInsertScheduledAsync(
        Job job, JobRequest request, DateTimeOffset runAt, DateTimeOffset now, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        // As JobRows does: an alias of the key being recorded is committed before the insert looks for it.
        // Either statement bounds how long the server keeps the transaction (its row, its lock) waiting for the Api.
        await db.Database.ExecuteSqlInterpolatedAsync(
            job.IdempotencyKey is { } key ? KeyLocks.Shared(key, idleTransactions) : idleTransactions.SetLimit(), cancellationToken);

        var inserted = await db.Database.ExecuteSqlInterpolatedAsync($"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, idempotency_key, request_hash, payload_hash, created_at, updated_at, next_attempt_at)
            SELECT {job.Id}, {job.Kind}, {job.BusinessKey}, {job.Status}, 0, {job.IdempotencyKey}, {job.RequestHash}, {job.PayloadHash}, {job.CreatedAt}, {job.UpdatedAt}, {runAt}
             WHERE NOT EXISTS (SELECT 1 FROM job_key_aliases a WHERE a.idempotency_key = {job.IdempotencyKey})
            ON CONFLICT DO NOTHING
            """, cancellationToken);
        if (inserted == 0)
        {
            return false;
        }

        db.ScheduledMessages.Add(ScheduledJobs.ToScheduledMessage(request, job.Id, runAt, now));
        await db.SaveChangesAsync(cancellationToken);
        // The row's age is checked before the last statement (ADR 0013): the row commits within the settle horizon of
        // its created_at or not at all, however long the statements before waited. Its age by the clock that stamped it
        // (as JobRows measures it), so clocks that disagree change nothing. The last statement tells the server to end
        // the transaction should the commit not follow within the tail limit.
        var dueAtMilliseconds = runAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture);
        var horizon = SettleHorizon.From(listing.Value);
        if (clock.GetUtcNow() - job.CreatedAt >= horizon.StartWithin)
        {
            throw SettleHorizon.TooLate(job.Id);
        }

        await db.Database.ExecuteSqlInterpolatedAsync(
            $"SELECT set_config('idle_in_transaction_session_timeout', {horizon.TailLimitMilliseconds}, true), pg_notify({ScheduledJobs.NotifyChannel}, {dueAtMilliseconds})",
            cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return true;
    }

    /// <summary>
    /// The answer to a submission whose job exists (same Idempotency-Key and body, or same business
    /// id), or null when none does: a job that may still be publishing is secured first
    /// (<see cref="SecureRecentAsync"/>), one that may never have been published is published again
    /// (<see cref="MayBeUnpublished"/>); unless <paramref name="publishRepeats"/> is false, when either is
    /// <see cref="SubmitStatus.WouldPublish"/> instead.
    /// </summary>
    private async Task<SubmitResult?> AnswerRepeatAsync(
        JobRequest request, string? idempotencyKey, string requestHash, DateTimeOffset now, bool publishRepeats, CancellationToken cancellationToken)
    {
        var existing = await FindExistingAsync(request, idempotencyKey, requestHash, bindKey: true, cancellationToken);
        if (!publishRepeats && AnswerPublishes(existing, request, requestHash, now))
        {
            return new SubmitResult(SubmitStatus.WouldPublish, existing!.Value.Job);
        }

        if (existing is { Status: SubmitStatus.Duplicate, Job: { } recent } && MayStillBePublishing(recent, now))
        {
            return await SecureRecentAsync(recent, request, requestHash, cancellationToken);
        }

        if (existing is { Status: SubmitStatus.Duplicate, Job: { } found } && MayBeUnpublished(found, request, requestHash, now))
        {
            if (!await TryPublishAsync(request, found.Id, cancellationToken))
            {
                return new SubmitResult(SubmitStatus.PublishFailed);
            }

            JobsLog.JobRepublished(logger, found.Id, found.Kind, found.BusinessKey, now - found.UpdatedAt);
            await TouchQueuedAsync(found.Id, cancellationToken);
        }

        return existing;
    }

    /// <summary>
    /// The answer to a repeat of an accepted request that publishes nothing, for a submission the backpressure
    /// gate refuses (its kind's queue full, the broker blocking publishers): the job, as
    /// <see cref="SubmitAsync"/> answers that repeat (a key answered with the job of its business id is recorded
    /// as its alias there too), or the refusal of a reused key or business id. Null when no job was submitted
    /// for the request, or when the repeat would publish its command (<see cref="MayStillBePublishing"/>,
    /// <see cref="MayBeUnpublished"/>): that command would join the queue the gate keeps it from, so the
    /// request waits for it as a new job does. Null as well when the database cannot be reached: the gate's
    /// refusal tells the client to retry as a 503 for the database would.
    /// </summary>
    /// <param name="body">The body <paramref name="request"/> was parsed from, as it arrived.</param>
    public async Task<SubmitResult?> AnswerRepeatWithoutPublishAsync(
        JobRequest request, string? idempotencyKey, byte[] body, CancellationToken cancellationToken)
    {
        var now = ToMicroseconds(clock.GetUtcNow());
        var requestHash = RequestHash(body);
        SubmitResult? existing;
        try
        {
            existing = await FindExistingAsync(request, idempotencyKey, requestHash, bindKey: true, cancellationToken);
        }
        catch (Exception exception) when (DatabaseFailures.IsUnavailable(exception) && !cancellationToken.IsCancellationRequested)
        {
            JobsLog.RepeatLookupFailed(logger, exception, request.Kind);
            return null;
        }

        return AnswerPublishes(existing, request, requestHash, now) ? null : existing;
    }

    /// <summary>
    /// Whether answering a repeat that found <paramref name="existing"/> publishes its job's command again: a job that may
    /// still be publishing is secured (<see cref="MayStillBePublishing"/>), one that may never have been published is
    /// published again (<see cref="MayBeUnpublished"/>).
    /// </summary>
    private bool AnswerPublishes(SubmitResult? existing, JobRequest request, string requestHash, DateTimeOffset now) =>
        existing is { Status: SubmitStatus.Duplicate, Job: { } found }
        && (MayStillBePublishing(found, now) || MayBeUnpublished(found, request, requestHash, now));

    /// <summary>
    /// A repeat finds its job <c>queued</c> within the publish budget of the row's creation: the request that
    /// committed the row may still be waiting for its confirm (<see cref="SecureRecentAsync"/>).
    /// </summary>
    private bool MayStillBePublishing(Job found, DateTimeOffset now) =>
        found.Status == JobStatus.Queued && now - found.CreatedAt <= PublishBudget;

    /// <summary>
    /// A repeat of the same request (byte for byte) finds its job still <c>queued</c> longer after its
    /// last update than the request that created it can have taken (its publish budget, then the
    /// removal of its row). Its command may never have reached the broker: that request's process
    /// died between the row's commit and the confirm, or could not remove the row after a failed
    /// publish. The client repeats it because it got no answer, so the command is published again
    /// with the job's id; if the first one is in the queue after all, the inbox applies it once.
    /// <see cref="FindExistingAsync"/> finds only jobs of the request's kind.
    /// </summary>
    private bool MayBeUnpublished(Job found, JobRequest request, string requestHash, DateTimeOffset now) =>
        found.Status == JobStatus.Queued
        && request.RunAt is null
        && found.RequestHash == requestHash
        && now - found.UpdatedAt > PublishBudget;

    /// <summary>
    /// The longest the request that commits a row can go on with it, from the row's <c>created_at</c>:
    /// its publish, then the removal of its row.
    /// </summary>
    private TimeSpan PublishBudget => ConnectTimeout + CleanupTimeout;

    private TimeSpan ConnectTimeout => TimeSpan.FromSeconds(rabbitMq.Value.ConnectTimeoutSeconds);

    /// <summary>
    /// A repeat that finds its job <c>queued</c> within the publish budget of the row's creation: the
    /// request that committed the row may still be waiting for its confirm, and if that fails it
    /// removes the row. Answering 202 now would promise a job that may vanish a moment later. So the
    /// repeat first takes the row out of that removal (it moves <c>updated_at</c>, which the removal
    /// matches on) and then publishes the command itself: its own request when it is the same byte
    /// for byte, else the request stored in the row. If the first command was confirmed too, the
    /// inbox (keyed by the business key) applies the job once. A row no longer <c>queued</c> was
    /// received by a worker; a row gone was removed after a failed publish, and the client retries.
    /// Only repeats within the first request's budget publish so: a client repeating a request for
    /// minutes adds no more than that to the queue (later repeats follow <see cref="MayBeUnpublished"/>).
    /// </summary>
    private async Task<SubmitResult> SecureRecentAsync(
        Job found, JobRequest request, string requestHash, CancellationToken cancellationToken)
    {
        List<StoredRequest> stored;
        await using (var db = await dbFactory.CreateDbContextAsync(cancellationToken))
        {
            var now = ToMicroseconds(clock.GetUtcNow());
            // "(status = …) IS TRUE" here and in the other writes of one queued job: a condition no index
            // can serve, so the row is found by its primary key. Written plainly, statistics taken while
            // few jobs were queued sent it through the (status, created_at, id) index jobs then had,
            // reading every queued job: during a backlog (a broker outage, a burst), exactly when these
            // run most. Any index led by the status would invite the same plan.
            stored = await db.Database.SqlQuery<StoredRequest>($"""
                UPDATE jobs SET updated_at = GREATEST(updated_at + interval '1 microsecond', {now})
                 WHERE id = {found.Id} AND (status = {JobStatus.Queued}) IS TRUE
                RETURNING request_body AS "Body"
                """).ToListAsync(cancellationToken); // not composed: EF cannot wrap an UPDATE in a query
            if (stored.Count == 0)
            {
                var current = await db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == found.Id, cancellationToken);
                return current is null ? new SubmitResult(SubmitStatus.InFlight) : new SubmitResult(SubmitStatus.Duplicate, current);
            }
        }

        // No stored request: a worker has received the command (it clears the request when it does).
        if (stored[0].Body is not { } body)
        {
            return new SubmitResult(SubmitStatus.Duplicate, found);
        }

        var command = request.RunAt is null && found.RequestHash == requestHash
            ? request
            : JobRequestParser.ReadStored(found.Kind, body, found.BusinessKey, new FieldErrors(), clock.GetUtcNow(), webhookUrls);
        if (command is null)
        {
            // Valid when it was submitted, refused by the rules now (a new version in between): the
            // row stays queued with its request, and the stranded-job check says why it cannot publish it.
            return new SubmitResult(SubmitStatus.Duplicate, found);
        }

        if (!await TryPublishAsync(command, found.Id, cancellationToken))
        {
            // The row stays: the first request may have been confirmed. A later repeat or the
            // stranded-job check publishes it again.
            return new SubmitResult(SubmitStatus.PublishFailed);
        }

        JobsLog.RecentJobPublished(logger, found.Id, found.Kind, found.BusinessKey);
        return new SubmitResult(SubmitStatus.Duplicate, found);
    }

    private static DateTimeOffset ToMicroseconds(DateTimeOffset time) =>
        new(time.Ticks - time.Ticks % TimeSpan.TicksPerMicrosecond, time.Offset);

    private sealed record StoredRequest(byte[]? Body);

    /// <summary>After a republish: repeats within the next publish budget publish nothing more.</summary>
    private async Task TouchQueuedAsync(Guid jobId, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        // As every write of a job's times (ADR 0013): another replica may have written the row since this one read
        // it, by a clock ahead of this one's; updated_at only grows.
        var now = ToMicroseconds(clock.GetUtcNow());
        await db.Database.ExecuteSqlInterpolatedAsync(
            $"UPDATE jobs SET updated_at = GREATEST(updated_at + interval '1 microsecond', {now}) WHERE id = {jobId} AND (status = {JobStatus.Queued}) IS TRUE",
            cancellationToken);
    }

    /// <summary>
    /// The positions in <paramref name="requests"/> (all of <paramref name="kind"/>) of those no job was submitted
    /// for: no job holds the key, as its own or as an alias, nor the kind and business id. These are the requests
    /// <see cref="FindExistingAsync"/> finds nothing for; any other is answered by it (its job, or a reused key or
    /// business id). One look for them all, three short indexed queries on one connection, so a batch refused for
    /// them costs one lookup whatever its size. Only a look: <see cref="SubmitAsync"/> still answers each request.
    /// </summary>
    public async Task<IReadOnlyList<int>> UnsubmittedAsync(
        string kind, IReadOnlyList<(string BusinessKey, string? IdempotencyKey)> requests, CancellationToken cancellationToken)
    {
        var businessKeys = requests.Select(r => r.BusinessKey).Distinct(StringComparer.Ordinal).ToList();
        var keys = requests.Select(r => r.IdempotencyKey).OfType<string>().Distinct(StringComparer.Ordinal).ToList();
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var submitted = new HashSet<string>(
            await db.Jobs.AsNoTracking().Where(j => j.Kind == kind && businessKeys.Contains(j.BusinessKey)).Select(j => j.BusinessKey).ToListAsync(cancellationToken),
            StringComparer.Ordinal);
        var keyed = new HashSet<string>(StringComparer.Ordinal);
        if (keys.Count > 0)
        {
            keyed.UnionWith(await db.Jobs.AsNoTracking().Where(j => keys.Contains(j.IdempotencyKey!)).Select(j => j.IdempotencyKey!).ToListAsync(cancellationToken));
            // An alias whose job is gone names nothing (FindByKeyAsync).
            keyed.UnionWith(await db.JobKeyAliases.AsNoTracking()
                .Where(a => keys.Contains(a.IdempotencyKey) && db.Jobs.Any(j => j.Id == a.JobId))
                .Select(a => a.IdempotencyKey).ToListAsync(cancellationToken));
        }

        return [.. requests.Index()
            .Where(r => !submitted.Contains(r.Item.BusinessKey) && (r.Item.IdempotencyKey is not { } key || !keyed.Contains(key)))
            .Select(r => r.Index)];
    }

    /// <summary>What a repeat is recognised by beside its key: the body as it arrived, hashed.</summary>
    private static string RequestHash(byte[] body) => Convert.ToHexStringLower(SHA256.HashData(body));

    /// <param name="bindKey">Whether a key answered with the job of the business id is recorded as its alias (<see cref="BindKeyAsync"/>).</param>
    private async Task<SubmitResult?> FindExistingAsync(
        JobRequest request, string? idempotencyKey, string requestHash, bool bindKey, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);

        if (idempotencyKey is not null && await FindByKeyAsync(db, request, idempotencyKey, requestHash, cancellationToken) is { } byKey)
        {
            return byKey;
        }

        var byBusinessKey = await db.Jobs.AsNoTracking().WithoutRequestBody()
            .FirstOrDefaultAsync(j => j.Kind == request.Kind && j.BusinessKey == request.BusinessKey, cancellationToken);
        if (byBusinessKey is not null && PayloadFingerprint.Conflicts(byBusinessKey.PayloadHash, request.Fingerprint))
        {
            // Rows without a fingerprint (written by a worker for a direct publish, or before it was kept) conflict with nothing.
            JobsLog.BusinessIdReused(logger, byBusinessKey.Id, byBusinessKey.Kind, byBusinessKey.BusinessKey);
            return new SubmitResult(SubmitStatus.ContentConflict, byBusinessKey);
        }

        if (byBusinessKey is null)
        {
            return null;
        }

        return idempotencyKey is null || !bindKey
            ? new SubmitResult(SubmitStatus.Duplicate, byBusinessKey)
            : await BindKeyAsync(db, request, idempotencyKey, requestHash, byBusinessKey, cancellationToken);
    }

    /// <summary>
    /// The job <paramref name="idempotencyKey"/> names, as its own key or as an alias (<see cref="JobKeyAlias"/>):
    /// <see cref="SubmitStatus.Duplicate"/> for the request it was first sent with, <see cref="SubmitStatus.KeyReused"/>
    /// for any other; null when it names none.
    /// </summary>
    private async Task<SubmitResult?> FindByKeyAsync(
        ConveyorDbContext db, JobRequest request, string idempotencyKey, string requestHash, CancellationToken cancellationToken)
    {
        var job = await db.Jobs.AsNoTracking().WithoutRequestBody()
            .FirstOrDefaultAsync(j => j.IdempotencyKey == idempotencyKey, cancellationToken);
        var sentWith = job?.RequestHash;
        if (job is null)
        {
            var alias = await db.JobKeyAliases.AsNoTracking().FirstOrDefaultAsync(a => a.IdempotencyKey == idempotencyKey, cancellationToken);
            if (alias is null)
            {
                return null;
            }

            // Null only while the job's removal (which takes its aliases along) commits: named by nothing then.
            job = await db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == alias.JobId, cancellationToken);
            sentWith = alias.RequestHash;
        }

        if (job is null)
        {
            return null;
        }

        if (job.Kind == request.Kind && sentWith == requestHash)
        {
            return new SubmitResult(SubmitStatus.Duplicate, job);
        }

        JobsLog.IdempotencyKeyReused(logger, job.Id);
        return new SubmitResult(SubmitStatus.KeyReused);
    }

    /// <summary>
    /// Answers a keyed request with <paramref name="job"/>, the job of its business id, and records its key as
    /// that job's alias: the key now names the job as one that created it would, so the same request again gets
    /// the job (<see cref="FindByKeyAsync"/>) and another body under the key is refused as a reused key. Under the
    /// key's lock (<see cref="KeyLocks"/>), so a job inserted with the key meanwhile is found here, or finds the alias.
    /// </summary>
    private async Task<SubmitResult?> BindKeyAsync(
        ConveyorDbContext db, JobRequest request, string idempotencyKey, string requestHash, Job job, CancellationToken cancellationToken)
    {
        await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        await db.Database.ExecuteSqlInterpolatedAsync(KeyLocks.Exclusive(idempotencyKey, idleTransactions), cancellationToken);
        if (await FindByKeyAsync(db, request, idempotencyKey, requestHash, cancellationToken) is { } taken)
        {
            return taken;
        }

        // No row, or a foreign key refused (the removal committing meanwhile): the job was removed since it was
        // read (its publish failed), so the key names nothing and the client retries.
        var now = clock.GetUtcNow();
        try
        {
            var recorded = await db.Database.ExecuteSqlInterpolatedAsync($"""
                INSERT INTO job_key_aliases (idempotency_key, job_id, request_hash, created_at)
                SELECT {idempotencyKey}, id, {requestHash}, {now} FROM jobs WHERE id = {job.Id}
                """, cancellationToken);
            await transaction.CommitAsync(cancellationToken);
            return recorded == 1 ? new SubmitResult(SubmitStatus.Duplicate, job) : null;
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.ForeignKeyViolation)
        {
            return null;
        }
    }

    private async Task<bool> TryPublishAsync(JobRequest request, Guid jobId, CancellationToken cancellationToken)
    {
        // Publish waits for the broker's confirm; when the broker is unreachable it would wait for a
        // connection indefinitely, so the request gets the same budget as a connection attempt.
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(ConnectTimeout);
        var started = Stopwatch.GetTimestamp();
        try
        {
            await request.PublishAsync(publishEndpoint, jobId, timeout.Token);
            metrics.Publish(request.Kind, started, "confirmed");
            return true;
        }
        catch (Exception ex)
        {
            metrics.Publish(request.Kind, started, "failed");
            JobsLog.PublishFailed(logger, ex, jobId, request.Kind);
            return false;
        }
    }

    /// <summary>
    /// Deletes the row of a job whose command was not confirmed, so the client can retry with the
    /// same Idempotency-Key. A row a worker has already moved on from <c>queued</c> proves the command
    /// did arrive (the confirm alone was lost): that job is kept and reported as accepted. Only until
    /// <paramref name="removeBy"/>: a repeat after it may have been answered with the job, so a row
    /// whose insert waited that long stays <c>queued</c> with its request, for the stranded-job check
    /// or a repeat to publish (the client still gets the 503, as when the removal fails).
    /// </summary>
    private async Task<SubmitResult> RemoveUnpublishedAsync(Job job, DateTimeOffset removeBy)
    {
        var left = removeBy - clock.GetUtcNow();
        if (left <= TimeSpan.Zero)
        {
            JobsLog.UnpublishedRowKept(logger, job.Id);
            return new SubmitResult(SubmitStatus.PublishFailed);
        }

        using var timeout = new CancellationTokenSource(left < CleanupTimeout ? left : CleanupTimeout);
        try
        {
            await using var db = await dbFactory.CreateDbContextAsync(timeout.Token);
            // Only the row as this request wrote it: a repeat that moved updated_at has answered (or
            // will answer) for it and publishes the command itself (SecureRecentAsync).
            var removed = await db.Database.ExecuteSqlInterpolatedAsync(
                $"DELETE FROM jobs WHERE id = {job.Id} AND (status = {JobStatus.Queued} AND updated_at = {job.UpdatedAt}) IS TRUE", timeout.Token);
            if (removed == 0
                && await db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == job.Id, timeout.Token) is { Status: not JobStatus.Queued } picked)
            {
                return new SubmitResult(SubmitStatus.Duplicate, picked);
            }
        }
        catch (Exception ex)
        {
            // Left behind as "queued": the same request submitted again publishes it (MayBeUnpublished),
            // and so does the stranded-job check, from the stored request (StrandedJobRepublisher).
            JobsLog.RemoveUnpublishedFailed(logger, ex, job.Id);
        }

        return new SubmitResult(SubmitStatus.PublishFailed);
    }
}
