using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;
using Npgsql;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// Writes job status in short transactions of its own, so that status stays visible while the
/// inbox transaction is open and survives when that transaction rolls back. The writes that take a
/// <see cref="ConveyorDbContext"/> join the caller's transaction instead, to commit with what they show.
/// </summary>
public sealed partial class JobTracker(IDbContextFactory<ConveyorDbContext> dbFactory, TimeProvider time, ILogger<JobTracker> logger)
{
    /// <summary>The longest <c>jobs.last_error</c> the worker writes.</summary>
    public const int MaxErrorLength = 4000;

    /// <summary>
    /// No attempt is numbered 0: progress for an attempt not known applies to the latest one; a failure
    /// of a delivery that claimed no attempt only to a job nothing has taken up (<see cref="UpdateAsync"/>).
    /// </summary>
    private const int UnknownAttempt = 0;

    /// <summary>
    /// Marks an attempt as started; creates the row when another service published directly.
    /// The job's row id and the attempt counted, or null when the job must not run: it succeeded
    /// already (a replay after the inbox row was swept) or was cancelled.
    /// </summary>
    /// <param name="fingerprint">What the message's command says: a job row created for another command
    /// (ADR 0011) is not started either (<see cref="ConflictingJobFingerprintAsync"/> tells it apart).</param>
    public Task<(Guid Id, int Attempt)?> StartAttemptAsync(JobRef job, byte[]? fingerprint, CancellationToken cancellationToken) =>
        CountAttemptAsync(job, error: null, cancellationToken, fingerprint);

    /// <summary>
    /// The fingerprint of the command <paramref name="job"/>'s row was created for, when it says something
    /// else than <paramref name="fingerprint"/> (ADR 0011); else null. A dead-lettered job's command failed
    /// for good: a corrected command under its key may run, so it conflicts with nothing.
    /// </summary>
    public async Task<byte[]?> ConflictingJobFingerprintAsync(JobRef job, byte[]? fingerprint, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var stored = await LiveJobFingerprintAsync(db, job, cancellationToken);
        return PayloadFingerprint.Conflicts(stored, fingerprint) ? stored : null;
    }

    /// <summary>
    /// The fingerprint of the command <paramref name="job"/>'s row was created for, unless the job was
    /// dead-lettered (its command failed for good, and a corrected one may take its place); null without one.
    /// </summary>
    private static Task<byte[]?> LiveJobFingerprintAsync(ConveyorDbContext db, JobRef job, CancellationToken cancellationToken) =>
        db.Jobs.AsNoTracking()
            .Where(j => j.Kind == job.Kind && j.BusinessKey == job.BusinessKey && j.Status != JobStatus.DeadLettered)
            .Select(j => j.PayloadHash)
            .FirstOrDefaultAsync(cancellationToken);

    /// <summary>
    /// Creates <paramref name="job"/>'s row, queued and not attempted yet, as the Api creates a job's, in a short
    /// transaction of its own, unless the job has a row (then nothing is written). For a command another service
    /// published directly: created by the single-message inbox's claim, the row would commit only with that
    /// transaction, after the consumer (up to its timeout), behind the place of a client polling
    /// <c>GET /api/jobs?order=oldest</c> that has passed it meanwhile (ADR 0013). Created here, it commits at
    /// once, and the claim that follows counts the attempt on it like on any other job's row.
    /// </summary>
    /// <remarks>
    /// Every row the worker creates is stamped (<c>created_at</c>, <c>updated_at</c>) by the database's clock when
    /// its statement starts, never by the worker's: the settle horizon is the database's clock, and a worker whose
    /// clock is behind put its rows behind it. The message's job id is a claim, as in the inbox (see <see cref="JobRef"/>):
    /// under the id's lock (<see cref="ClaimedJobIdLocks"/>), a row holding it already gets a fresh id instead.
    /// </remarks>
    /// <param name="fingerprint">What the command says (ADR 0011): the row is this command's job.</param>
    public async Task CreateRowAsync(JobRef job, byte[]? fingerprint, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var (id, fresh) = (job.JobId ?? Guid.CreateVersion7(), Guid.CreateVersion7());
        FormattableString create = $"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at, payload_hash)
            SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs o WHERE o.id = {id}) THEN {fresh} ELSE {id} END,
                   {job.Kind}, {job.BusinessKey}, {JobStatus.Queued}, 0, statement_timestamp(), statement_timestamp(), {fingerprint}::bytea
            ON CONFLICT (kind, business_key) DO NOTHING
            """;
        if (job.JobId is not { } claimed)
        {
            await db.Database.ExecuteSqlAsync(create, cancellationToken);
            return;
        }

        await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        await db.Database.ExecuteSqlInterpolatedAsync(ClaimedJobIdLocks.One(claimed), cancellationToken);
        await db.Database.ExecuteSqlAsync(create, cancellationToken);
        await transaction.CommitAsync(cancellationToken);
    }

    /// <summary>
    /// Inside the inbox transaction, in the same statement as the inbox row: counts the attempt and
    /// claims the job (creating its row when another service published directly), unless it
    /// succeeded already or was cancelled. One round trip and no commit of its own: the attempt
    /// becomes visible with the job's outcome (a failed attempt by
    /// <see cref="RecordFailedAttemptInTransactionAsync"/>, still under the row lock this takes).
    /// With <see cref="InboxClaim.Run"/>, also the job's row id and the attempt counted (see <see cref="JobRef"/>).
    /// A job row created for another command (ADR 0011) is not claimed: <see cref="InboxClaim.NotRunnable"/>
    /// with that command's fingerprint as <c>JobConflict</c>, and the caller rolls the inbox row back.
    /// <c>CreatedJobRow</c> says that the claim created the job's row (no row was there when it began): that row
    /// would commit only with the transaction, after the consumer, so the single-message inbox rolls back and
    /// creates it first in a transaction of its own (<see cref="CreateRowAsync"/>, ADR 0013).
    /// With <see cref="InboxClaim.Run"/>, also <c>TransactionId</c>: the id of the inbox transaction, which the claim's
    /// write assigned, read in the same round trip; asked after should its COMMIT fail (ADR 0004).
    /// </summary>
    public async Task<(InboxClaim Claim, Guid? JobId, int? Attempt, byte[]? JobConflict, byte[]? FirstFingerprint, bool CreatedJobRow, string? TransactionId)> ClaimInTransactionAsync(
        ConveyorDbContext db, string consumerId, string messageKey, Guid? messageId, byte[]? fingerprint, JobRef job, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        var (id, fresh) = (job.JobId ?? Guid.CreateVersion7(), Guid.CreateVersion7());
        // A row an older pod wrote holds the fingerprint from before name order (ADR 0011, amendment):
        // the same command. Null, and so matching nothing, for most commands.
        var legacy = PayloadFingerprint.LegacyOf(fingerprint);
        // The message's job id is a claim (see JobRef): an id another row holds is not taken.
        var row = await RunClaimStatementAsync(db, job.JobId, new NpgsqlBatchCommand(ClaimSql)
        {
            Parameters =
            {
                new NpgsqlParameter<string>("consumer_id", consumerId),
                new NpgsqlParameter<string>("message_key", messageKey),
                new NpgsqlParameter<Guid?>("message_id", messageId),
                new NpgsqlParameter<DateTimeOffset>("now", now),
                new NpgsqlParameter<byte[]?>("fingerprint", fingerprint),
                new NpgsqlParameter<byte[]?>("legacy", legacy),
                new NpgsqlParameter<Guid>("id", id),
                new NpgsqlParameter<Guid>("fresh", fresh),
                new NpgsqlParameter<string>("kind", job.Kind),
                new NpgsqlParameter<string>("business_key", job.BusinessKey),
            },
        }, cancellationToken);
        var jobFingerprint = row.JobFingerprint;
        if (row.Inserted && row.JobId is null && jobFingerprint is null && fingerprint is not null)
        {
            // Not claimed, and no conflict in the statement's snapshot. That snapshot is older than a job
            // row that a claim of another command under this key committed while this insert waited for
            // its inbox row (it failed and let its row go): the upsert met that row and left it, the
            // lookup did not see it. A new statement does; without it this message was settled unrun.
            jobFingerprint = await LiveJobFingerprintAsync(db, job, cancellationToken);
        }

        return !row.Inserted ? (InboxClaim.Duplicate, null, null, null, null, false, null)
            : row.JobId is { } jobId ? (InboxClaim.Run, jobId, row.Attempt, null, row.FirstFingerprint, row.CreatedJobRow, row.TransactionId)
            : PayloadFingerprint.Conflicts(jobFingerprint, fingerprint) ? (InboxClaim.NotRunnable, null, null, jobFingerprint, null, false, null)
            : (InboxClaim.NotRunnable, null, null, null, null, false, null);
    }

    /// <summary>
    /// The claim of <see cref="ClaimInTransactionAsync"/>: the inbox row, and the job's row counted, claimed
    /// or created, in one statement (not composed: a data-modifying WITH must stay at the top level). A row it
    /// creates is stamped by the database's clock (<see cref="CreateRowAsync"/> says why); <c>created_job_row</c>
    /// tells that it created one: claimed, with no row in the statement's snapshot (a row another transaction
    /// committed after that snapshot, which the upsert met, reads as created too: the caller only does more work).
    /// </summary>
    private const string ClaimSql = $"""
        WITH inbox_row AS (
            INSERT INTO inbox (consumer_id, message_key, message_id, received_at, payload_hash)
            VALUES (@consumer_id, @message_key, @message_id, @now, @fingerprint)
            ON CONFLICT DO NOTHING
            RETURNING 1),
        job_row AS (
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at, payload_hash)
            SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs o WHERE o.id = @id) THEN @fresh ELSE @id END,
                   @kind, @business_key, '{JobStatus.Running}', 1, statement_timestamp(), statement_timestamp(), @fingerprint
             WHERE EXISTS (SELECT 1 FROM inbox_row)
            ON CONFLICT (kind, business_key) DO UPDATE
               SET status = '{JobStatus.Running}', attempts = jobs.attempts + 1, next_attempt_at = NULL,
                   updated_at = GREATEST(jobs.updated_at + interval '1 microsecond', @now),
                   finished_at = NULL, request_body = NULL,
                   payload_hash = CASE WHEN jobs.status = '{JobStatus.DeadLettered}' THEN COALESCE(excluded.payload_hash, jobs.payload_hash) ELSE jobs.payload_hash END,
                   original_payload_hash = CASE WHEN jobs.status = '{JobStatus.DeadLettered}' AND excluded.payload_hash IS DISTINCT FROM jobs.payload_hash
                                                     AND excluded.payload_hash IS NOT NULL THEN COALESCE(jobs.original_payload_hash, jobs.payload_hash)
                                                ELSE jobs.original_payload_hash END
             WHERE jobs.status NOT IN ('{JobStatus.Succeeded}', '{JobStatus.Cancelled}')
               AND (jobs.status = '{JobStatus.DeadLettered}' OR jobs.payload_hash IS NULL OR excluded.payload_hash IS NULL
                    OR jobs.payload_hash = excluded.payload_hash OR jobs.payload_hash = @legacy)
            RETURNING id, attempts, COALESCE(original_payload_hash, payload_hash) AS first_fingerprint)
        SELECT EXISTS (SELECT 1 FROM inbox_row) AS inserted, (SELECT j.id FROM job_row j) AS job_id,
               (SELECT j.attempts FROM job_row j) AS attempt, (SELECT j.first_fingerprint FROM job_row j) AS first_fingerprint,
               (SELECT o.payload_hash FROM jobs o
                 WHERE o.kind = @kind AND o.business_key = @business_key AND o.status <> '{JobStatus.DeadLettered}') AS job_fingerprint,
               EXISTS (SELECT 1 FROM job_row)
                   AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.kind = @kind AND o.business_key = @business_key) AS created_job_row,
               {Inbox.CommitOutcome.TransactionIdSql} AS transaction_id
        """;

    /// <summary>
    /// Runs <paramref name="claim"/> (<see cref="ClaimSql"/>) in the inbox transaction, after the lock of the
    /// <paramref name="claimedId"/> when the message claims one, in one round trip.
    /// </summary>
    /// <remarks>
    /// The claim may create the job's row under the claimed id if no row holds it, which its snapshot cannot
    /// tell while another inbox transaction holds an uncommitted row under it (a command under another key
    /// claiming the same id, its consumer running): the insert waited for that one and failed with a unique
    /// violation on pk_jobs, permanent, so the message went to _error unrun. Under the id's lock, taken in a
    /// statement before the claim, the claim sees what the lock's previous holder committed and takes a fresh
    /// id instead (InboxClaimedJobIdRaceTests). The two are sent as one batch: the server runs the claim
    /// only once the lock statement has finished, and takes the claim's snapshot then, so sending them
    /// together costs the lock no round trip of its own (EF's commands are one each).
    /// </remarks>
    private static async Task<ClaimRow> RunClaimStatementAsync(
        ConveyorDbContext db, Guid? claimedId, NpgsqlBatchCommand claim, CancellationToken cancellationToken)
    {
        var connection = (NpgsqlConnection)db.Database.GetDbConnection();
        await using var batch = new NpgsqlBatch(connection) { Transaction = (NpgsqlTransaction?)db.Database.CurrentTransaction?.GetDbTransaction() };
        if (claimedId is { } id)
        {
            batch.BatchCommands.Add(new NpgsqlBatchCommand(ClaimedJobIdLocks.EachSql) { Parameters = { new NpgsqlParameter<Guid[]> { TypedValue = [id] } } });
        }

        batch.BatchCommands.Add(claim);
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        if (claimedId is not null)
        {
            // Past the lock's row (void) to the claim's.
            await reader.NextResultAsync(cancellationToken);
        }

        await reader.ReadAsync(cancellationToken);
        return new ClaimRow
        {
            Inserted = reader.GetBoolean(0),
            JobId = await reader.IsDBNullAsync(1, cancellationToken) ? null : reader.GetGuid(1),
            Attempt = await reader.IsDBNullAsync(2, cancellationToken) ? null : reader.GetInt32(2),
            FirstFingerprint = await reader.IsDBNullAsync(3, cancellationToken) ? null : reader.GetFieldValue<byte[]>(3),
            JobFingerprint = await reader.IsDBNullAsync(4, cancellationToken) ? null : reader.GetFieldValue<byte[]>(4),
            CreatedJobRow = reader.GetBoolean(5),
            TransactionId = await reader.IsDBNullAsync(6, cancellationToken) ? null : reader.GetString(6),
        };
    }

    /// <summary>
    /// Inside the inbox transaction of a claimed attempt whose consumer failed, after its writes were
    /// rolled back to a savepoint taken after the claim: keeps the claim's count and <c>running</c>,
    /// records the error and removes the inbox row, so the message can be claimed again. Committed
    /// before the job row's lock is released, a cancel waiting for it sees an attempt that may have
    /// had its effect (README, DELETE /api/jobs/{jobId}) instead of a job that never started.
    /// </summary>
    public async Task RecordFailedAttemptInTransactionAsync(
        ConveyorDbContext db, string consumerId, string messageKey, Guid jobId, Exception exception, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        var error = Describe(exception);
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET last_error = {error}, updated_at = GREATEST(updated_at + interval '1 microsecond', {now}) WHERE id = {jobId};
            DELETE FROM inbox WHERE consumer_id = {consumerId} AND message_key = {messageKey};
            """, cancellationToken);
    }

    /// <summary>
    /// Records the error of a failed attempt that will be retried. With <paramref name="countAttempt"/>
    /// (the attempt was counted in a transaction that rolled back) it counts it again here, and
    /// creates the row if that transaction was the one creating it. Without it, the error is recorded
    /// only while <paramref name="job"/>'s attempt is the latest. The attempt the failure is now
    /// recorded under (the one counted here, or <paramref name="job"/>'s), for the failure path's later writes.
    /// A job not counted here because it was cancelled meanwhile (the rolled-back count let it read as not started,
    /// and a cancel took it) is flagged instead (<see cref="RecordAttemptBeforeCancelAsync"/>, with a warning): the
    /// attempt ran, and its effect may be out; null then, as for a job that succeeded.
    /// </summary>
    /// <param name="messageId">The failed delivery's message, named in that flag.</param>
    public async Task<int?> RecordAttemptFailureAsync(JobRef job, Exception exception, bool countAttempt, Guid? messageId, CancellationToken cancellationToken)
    {
        if (!countAttempt)
        {
            if (job.Attempt is null)
            {
                // Nothing was claimed: the job's status is whichever attempt's holds it, and the failure
                // path's later writes record this delivery's error where it may.
                return null;
            }

            await UpdateAsync(job, JobStatus.Running, exception, null, finished: false, cancellationToken);
            return job.Attempt;
        }

        if (await CountAttemptAsync(job, Describe(exception), cancellationToken) is { } counted)
        {
            return counted.Attempt;
        }

        // Not counted: the job succeeded already (another copy) or was cancelled. Only the latter is written, in a
        // statement of its own (nothing else is to commit with it); the extra round trip is only ever paid here.
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        if (await RecordAttemptBeforeCancelAsync(db, job.Kind, job.BusinessKey, messageId, time.GetUtcNow(), cancellationToken) is { } jobId)
        {
            LogAttemptBeforeCancel(logger, job.Kind, job.BusinessKey, jobId, messageId, exception);
        }

        return null;
    }

    /// <summary>
    /// One more attempt of a job that may still run, marked running (with <paramref name="error"/>
    /// as its last error when given); creates the row when another service published directly.
    /// The job's row id and the attempt counted, or null when the job succeeded already or was cancelled.
    /// </summary>
    /// <param name="fingerprint">When given, a row created for another command is not counted either (ADR 0011).</param>
    /// <remarks>
    /// In a transaction of its own, not as a statement committed on its own: the connection may break after the
    /// server applied the count, its answer lost. Taken for not counted, the attempt was counted again by the
    /// retry (the job read attempts 2 after one attempt). A statement in a transaction that loses its answer is
    /// rolled back with the broken connection, and a COMMIT that does is asked after (<see cref="Inbox.CommitOutcome"/>,
    /// ADR 0001): committed, the count stands and is returned, as it would have been.
    /// </remarks>
    private async Task<(Guid Id, int Attempt)?> CountAttemptAsync(JobRef job, string? error, CancellationToken cancellationToken, byte[]? fingerprint = null)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        var counted = await RunCountStatementAsync(db, job, error, fingerprint, onlyIfClaimedIdTaken: job.JobId is not null, cancellationToken);
        if (counted.ClaimedIdFree)
        {
            // No row this statement saw holds the claimed id, so a row under it would be created here, and
            // another inbox transaction may hold an uncommitted one (a command under another key claiming the
            // same id, its consumer running): the insert waited for it and failed with a unique violation on
            // pk_jobs, the lease claim for good and a failure unrecorded. So that case alone counts again under
            // the id's lock (ClaimedJobIdLocks), in a statement of its own (read committed: a snapshot of its own),
            // which sees what the lock's previous holder committed and takes a fresh id. The first statement wrote
            // nothing. A message without a claimed id, or whose id already has a row (the Api's jobs), is counted
            // in one statement as before (InboxClaimedJobIdRaceTests).
            await db.Database.ExecuteSqlInterpolatedAsync(ClaimedJobIdLocks.One(job.JobId!.Value), cancellationToken);
            counted = await RunCountStatementAsync(db, job, error, fingerprint, onlyIfClaimedIdTaken: false, cancellationToken);
        }

        if (await Inbox.CommitOutcome.CommitAsync(transaction, dbFactory, counted.TransactionId, cancellationToken) is { } answerLost)
        {
            LogCountAnswerLost(answerLost, job.Kind, job.BusinessKey);
        }

        return counted is { Id: { } id, Attempts: { } attempts } ? (id, attempts) : null;
    }

    /// <summary>
    /// The statement of <see cref="CountAttemptAsync"/>, in its short transaction (a row it creates commits with it,
    /// stamped by the database's clock, <see cref="CreateRowAsync"/>). With
    /// <paramref name="onlyIfClaimedIdTaken"/> it writes nothing unless a row it sees holds the claimed id,
    /// and says so (<see cref="CountedAttempt.ClaimedIdFree"/>).
    /// </summary>
    private async Task<CountedAttempt> RunCountStatementAsync(
        ConveyorDbContext db, JobRef job, string? error, byte[]? fingerprint, bool onlyIfClaimedIdTaken, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        var (id, fresh) = (job.JobId ?? Guid.CreateVersion7(), Guid.CreateVersion7());
        var legacy = PayloadFingerprint.LegacyOf(fingerprint);
        // The message's job id is a claim (see JobRef): an id another row holds is not taken.
        var counted = await db.Database.SqlQuery<CountedAttempt>($"""
            WITH counted AS (
                INSERT INTO jobs (id, kind, business_key, status, attempts, last_error, created_at, updated_at, payload_hash)
                SELECT CASE WHEN EXISTS (SELECT 1 FROM jobs o WHERE o.id = {id}) THEN {fresh} ELSE {id} END,
                       {job.Kind}, {job.BusinessKey}, {JobStatus.Running}, 1, {error}, statement_timestamp(), statement_timestamp(), {fingerprint}::bytea
                 WHERE NOT {onlyIfClaimedIdTaken} OR EXISTS (SELECT 1 FROM jobs o WHERE o.id = {id})
                ON CONFLICT (kind, business_key) DO UPDATE
                   SET status = {JobStatus.Running}, attempts = jobs.attempts + 1, last_error = COALESCE(excluded.last_error, jobs.last_error),
                       next_attempt_at = NULL, updated_at = GREATEST(jobs.updated_at + interval '1 microsecond', {now}), finished_at = NULL, request_body = NULL,
                       payload_hash = CASE WHEN jobs.status = {JobStatus.DeadLettered} THEN COALESCE(excluded.payload_hash, jobs.payload_hash) ELSE jobs.payload_hash END,
                       original_payload_hash = CASE WHEN jobs.status = {JobStatus.DeadLettered} AND excluded.payload_hash IS DISTINCT FROM jobs.payload_hash
                                                         AND excluded.payload_hash IS NOT NULL THEN COALESCE(jobs.original_payload_hash, jobs.payload_hash)
                                                    ELSE jobs.original_payload_hash END
                 WHERE jobs.status NOT IN ({JobStatus.Succeeded}, {JobStatus.Cancelled})
                   AND (jobs.status = {JobStatus.DeadLettered} OR jobs.payload_hash IS NULL OR excluded.payload_hash IS NULL
                        OR jobs.payload_hash = excluded.payload_hash OR jobs.payload_hash = {legacy}::bytea)
                RETURNING id, attempts, pg_current_xact_id_if_assigned()::text AS transaction_id)
            SELECT (SELECT c.id FROM counted c) AS id, (SELECT c.attempts FROM counted c) AS attempts,
                   {onlyIfClaimedIdTaken} AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.id = {id}) AS claimed_id_free,
                   (SELECT c.transaction_id FROM counted c) AS transaction_id
            """).ToListAsync(cancellationToken); // not composed: a data-modifying WITH must stay at the top level
        return counted[0];
    }

    /// <summary>
    /// Marks the job waiting for its stored redelivery, inside the caller's transaction: the one that
    /// stores the row (<see cref="Redelivery.RedeliveryStore"/>), so that no dispatcher can settle the row
    /// before the job shows that it waits for it.
    /// </summary>
    public Task MarkRetryScheduledAsync(ConveyorDbContext db, JobRef job, Exception exception, DateTimeOffset nextAttemptAt, CancellationToken cancellationToken) =>
        UpdateStatusAsync(db, job, JobStatus.RetryScheduled, exception, nextAttemptAt, finished: false, cancellationToken);

    public Task MarkDeadLetteredAsync(JobRef job, Exception exception, CancellationToken cancellationToken) =>
        UpdateAsync(job, JobStatus.DeadLettered, exception, null, finished: true, cancellationToken);

    /// <summary>
    /// A shutdown interrupted the attempt; the broker hands the message out again. Only an attempt this
    /// delivery claimed is marked: one stopped before its claim (or whose count could not be recorded)
    /// has no attempt of its own, and the job's status is another delivery's (a worker running it now).
    /// </summary>
    public Task MarkInterruptedAsync(JobRef job, CancellationToken cancellationToken) =>
        job.Attempt is null ? Task.CompletedTask : UpdateAsync(job, JobStatus.Queued, new OperationCanceledException("Interrupted by a worker shutdown; the message returns to the queue"), null, finished: false, cancellationToken);

    /// <summary>The progress of a running attempt; with <see cref="JobRef.Attempt"/>, only while it is the job's latest.</summary>
    public async Task ReportProgressAsync(JobRef job, int percent, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var now = time.GetUtcNow();
        var clamped = Math.Clamp(percent, 0, 100);
        var attempt = job.Attempt ?? UnknownAttempt;
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET progress = {clamped}, updated_at = GREATEST(updated_at + interval '1 microsecond', {now})
             WHERE kind = {job.Kind} AND business_key = {job.BusinessKey} AND status = {JobStatus.Running}
               AND ({attempt} = {UnknownAttempt} OR attempts = {attempt})
            """, cancellationToken);
    }

    /// <summary>Marks success inside the caller's (inbox) transaction, so it commits with the effect.</summary>
    public async Task MarkSucceededAsync(ConveyorDbContext db, JobRef job, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET status = {JobStatus.Succeeded}, last_error = NULL, next_attempt_at = NULL,
                   progress = CASE WHEN progress IS NULL THEN NULL ELSE 100 END,
                   updated_at = GREATEST(updated_at + interval '1 microsecond', {now}), finished_at = GREATEST(updated_at + interval '1 microsecond', {now})
             WHERE kind = {job.Kind} AND business_key = {job.BusinessKey} AND status <> {JobStatus.Cancelled}
            """, cancellationToken);
    }

    /// <summary>
    /// For a command the inbox settles unrun that the broker delivered with its redelivered flag set: when the job
    /// is cancelled, says so on the job (its <c>last_error</c>, which the Api shows as <c>lastError</c>) and logs a
    /// warning; true then. A job that succeeded already is left alone (false). An earlier delivery of the command
    /// went out before, possibly to a worker killed mid-attempt: in the short jobs' inboxes such an attempt leaves
    /// no trace (its transaction rolls back, its count with it), so the job read <c>queued</c> with 0 attempts and
    /// the cancel was accepted although that attempt may have had its effect (a charge at the gateway). The flag is
    /// all the worker can tell: a shutdown that gave back deliveries it never started sets it too, hence "may".
    /// </summary>
    /// <remarks>
    /// In <paramref name="db"/>'s transaction, if any (the single-message inbox's, so the note commits with the
    /// inbox row or the message comes back to write it). A note already there is not written again, so the job's
    /// <c>updated_at</c> moves once per redelivered message, not with every copy; nor is a note of an attempt known to
    /// have run before the cancel (<see cref="RecordAttemptBeforeCancelAsync"/>), which says more than this one's "may"
    /// (true is still returned, and the warning logged: this copy came back all the same). Nothing else writes a
    /// cancelled job's row, and a cancel requires <c>last_error</c> to be empty (the Api's <c>JobCanceller</c>).
    /// </remarks>
    public async Task<bool> RecordCancelledRedeliveryAsync(ConveyorDbContext db, JobRef job, Guid? messageId, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        var note =
            $"The command came back redelivered after the cancel (message {messageId?.ToString() ?? "without an id"}): an earlier delivery "
            + "may have started an attempt before the job was cancelled (a worker killed mid-attempt leaves no trace of it), whose effect "
            + "(a charge at the gateway) is then in no record here; check the remote side. The command was acked without running.";
        // The note of an attempt known to have run (RecordAttemptBeforeCancelAsync) says more than this one's "may": it is
        // kept, and the row left as it is; the job is still cancelled, and this copy is still reported.
        var cancelled = await db.Database.SqlQuery<Guid>($"""
            UPDATE jobs SET last_error = CASE WHEN starts_with(last_error, {AttemptBeforeCancelNote}) THEN last_error ELSE {note} END,
                   updated_at = CASE WHEN last_error IS DISTINCT FROM {note} AND NOT COALESCE(starts_with(last_error, {AttemptBeforeCancelNote}), false)
                                     THEN GREATEST(updated_at + interval '1 microsecond', {now}) ELSE updated_at END
             WHERE kind = {job.Kind} AND business_key = {job.BusinessKey} AND status = {JobStatus.Cancelled}
            RETURNING id AS "Value"
            """).ToListAsync(cancellationToken); // not composed: an UPDATE cannot be a subquery
        if (cancelled is not [var jobId])
        {
            return false;
        }

        LogCancelledRedelivery(job.Kind, job.BusinessKey, jobId, messageId);
        return true;
    }

    /// <summary>
    /// <see cref="RecordCancelledRedeliveryAsync(ConveyorDbContext, JobRef, Guid?, CancellationToken)"/> in a
    /// statement of its own, for an inbox whose message is settled already (the batched one's, after its batch committed).
    /// </summary>
    public async Task<bool> RecordCancelledRedeliveryAsync(JobRef job, Guid? messageId, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        return await RecordCancelledRedeliveryAsync(db, job, messageId, cancellationToken);
    }

    /// <summary>
    /// How the note of <see cref="RecordAttemptBeforeCancelAsync"/> begins, which
    /// <see cref="RecordCancelledRedeliveryAsync(ConveyorDbContext, JobRef, Guid?, CancellationToken)"/> does not replace.
    /// </summary>
    private const string AttemptBeforeCancelNote = "An attempt (message ";

    /// <summary>How the note of <see cref="RecordAttemptBeforeCancelAsync"/> goes on after the first message's id.</summary>
    private const string AttemptBeforeCancelText =
        ") ran before the cancel took effect: its count rolled back with its inbox transaction, so the job read as not started and was "
        + "cancelled meanwhile. Its effect (a charge at the gateway) may have applied and is in no record here; check the remote side. "
        + "The attempt is counted; the job stays cancelled and its command is not run again.";

    /// <summary>Where the note of <see cref="RecordAttemptBeforeCancelAsync"/> names the messages after the first.</summary>
    private const string OtherAttemptsBeforeCancel = " So did the attempt";

    /// <summary>How many messages the note of <see cref="RecordAttemptBeforeCancelAsync"/> names; those after it only counts.</summary>
    private const int NamedAttemptsBeforeCancel = 5;

    /// <summary>
    /// For an attempt that ran (its consumer succeeded, or failed after it started) but whose count rolled back with
    /// its inbox transaction: when the job was cancelled meanwhile, counts the attempt and says on the job (its
    /// <c>last_error</c>, the Api's <c>lastError</c>) that it ran before the cancel took effect and that its effect
    /// (a charge at the gateway) may have applied, which no record here shows; the job stays cancelled. The job's row
    /// id then, else null (the job is not cancelled: nothing written). The caller logs the warning.
    /// </summary>
    /// <remarks>
    /// A rolled-back count lets the job read <c>queued</c> with 0 attempts, and a cancel is accepted then (the Api's
    /// <c>JobCanceller</c>); a batch of the batched inbox that fails releases its job rows before its messages are
    /// settled again, one by one. Several attempts may find the job so (copies of its command, each in a failed batch
    /// or counted by its failure path): the note names the first message, then up to <see cref="NamedAttemptsBeforeCancel"/>
    /// in all, and says how many more. Once per message: a message the note names is neither written nor counted again
    /// (a retry of the write, a commit whose answer was lost); one past those it names would be counted again. The row is
    /// read under its lock and written in <paramref name="db"/>'s transaction, if any, else in one of its own.
    /// </remarks>
    public static async Task<Guid?> RecordAttemptBeforeCancelAsync(
        ConveyorDbContext db, string kind, string businessKey, Guid? messageId, DateTimeOffset now, CancellationToken cancellationToken)
    {
        await using var own = db.Database.CurrentTransaction is null ? await db.Database.BeginTransactionAsync(cancellationToken) : null;
        var cancelled = await db.Jobs.FromSql($"""
            SELECT * FROM jobs WHERE kind = {kind} AND business_key = {businessKey} AND status = {JobStatus.Cancelled} FOR UPDATE
            """).AsNoTracking().ToListAsync(cancellationToken); // not composed: FOR UPDATE stays on the job's row
        if (cancelled is not [var job])
        {
            return null;
        }

        var (named, more) = AttemptsNamedBeforeCancel(job.LastError);
        var message = messageId?.ToString() ?? "without an id";
        if (!named.Contains(message))
        {
            if (named.Count < NamedAttemptsBeforeCancel)
            {
                named.Add(message);
            }
            else
            {
                more++;
            }

            var note = AttemptBeforeCancelNoteOf(named, more);
            await db.Database.ExecuteSqlAsync($"""
                UPDATE jobs SET last_error = {note}, attempts = attempts + 1, updated_at = GREATEST(updated_at + interval '1 microsecond', {now})
                 WHERE id = {job.Id}
                """, cancellationToken);
        }

        if (own is not null)
        {
            await own.CommitAsync(cancellationToken);
        }

        return job.Id;
    }

    /// <summary>The note of <see cref="RecordAttemptBeforeCancelAsync"/> naming <paramref name="named"/> (the first first) and <paramref name="more"/> others.</summary>
    private static string AttemptBeforeCancelNoteOf(List<string> named, int more)
    {
        var note = AttemptBeforeCancelNote + named[0] + AttemptBeforeCancelText;
        if (named.Count == 1)
        {
            return note;
        }

        var others = string.Join(", ", named.Skip(1));
        return named.Count == 2 && more == 0
            ? $"{note}{OtherAttemptsBeforeCancel} of message {others}."
            : $"{note}{OtherAttemptsBeforeCancel}s of messages {others}{(more > 0 ? $" and {more} more" : "")}.";
    }

    /// <summary>The messages a note of <see cref="RecordAttemptBeforeCancelAsync"/> names, in order, and how many more it counts; none for another text.</summary>
    private static (List<string> Named, int More) AttemptsNamedBeforeCancel(string? note)
    {
        var end = note?.IndexOf(AttemptBeforeCancelText, StringComparison.Ordinal) ?? -1;
        if (note is null || !note.StartsWith(AttemptBeforeCancelNote, StringComparison.Ordinal) || end < AttemptBeforeCancelNote.Length)
        {
            return ([], 0);
        }

        List<string> named = [note[AttemptBeforeCancelNote.Length..end]];
        var rest = note[(end + AttemptBeforeCancelText.Length)..];
        if (!rest.StartsWith(OtherAttemptsBeforeCancel, StringComparison.Ordinal) || !rest.EndsWith('.'))
        {
            return (named, 0);
        }

        var list = rest[(rest.IndexOf("message", StringComparison.Ordinal) + "message".Length)..^1].TrimStart('s').TrimStart();
        var more = 0;
        var and = list.LastIndexOf(" and ", StringComparison.Ordinal);
        if (and >= 0 && list.EndsWith(" more", StringComparison.Ordinal)
            && int.TryParse(list[(and + " and ".Length)..^" more".Length], System.Globalization.CultureInfo.InvariantCulture, out var counted))
        {
            (list, more) = (list[..and], counted);
        }

        named.AddRange(list.Split(", ", StringSplitOptions.RemoveEmptyEntries));
        return (named, more);
    }

    /// <summary>
    /// The job's row id and attempts so far, or null when it has no row. The id is the job's also
    /// when the message carried none (another service published it directly).
    /// </summary>
    public async Task<(Guid Id, int Attempts)?> FindAsync(JobRef job, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var row = await db.Jobs.AsNoTracking()
            .Where(j => j.Kind == job.Kind && j.BusinessKey == job.BusinessKey)
            .Select(j => new { j.Id, j.Attempts })
            .SingleOrDefaultAsync(cancellationToken);
        return row is null ? null : (row.Id, row.Attempts);
    }

    public static string Describe(Exception exception, int maxLength = MaxErrorLength)
    {
        var text = $"{exception.GetType().Name}: {exception.Message}";
        // A wrapper's own message rarely says why (EF's "An error occurred while saving"): add the root cause.
        if (exception.GetBaseException() is var cause && cause != exception)
        {
            text += $" ({cause.GetType().Name}: {cause.Message})";
        }

        // Remote text goes into it (an error body, a producer's field): as the column can hold it.
        return StoredText.Storable(text, maxLength);
    }

    private async Task UpdateAsync(JobRef job, string status, Exception exception, DateTimeOffset? nextAttemptAt, bool finished, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        await UpdateStatusAsync(db, job, status, exception, nextAttemptAt, finished, cancellationToken);
    }

    private async Task UpdateStatusAsync(
        ConveyorDbContext db, JobRef job, string status, Exception exception, DateTimeOffset? nextAttemptAt, bool finished, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        var error = Describe(exception);
        // An attempt's failure path writes its own status only: once a newer attempt was counted (another
        // copy, a run that took the lease over), that attempt's status stands. A delivery that failed before
        // any claim (refused by a filter, its deferral not stored) has no attempt: it may only settle a job
        // that nothing has taken up, one still queued or scheduled, or one whose redelivery was due (its
        // message is likely this one: left alone, a redelivered copy refused on its way in would leave the
        // job waiting for a retry for ever). A job another delivery runs or waits to retry, or that ended,
        // is that delivery's. Due times are the database's (RedeliveryStore).
        var attempt = job.Attempt ?? UnknownAttempt;
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET status = {status}, last_error = {error}, next_attempt_at = {nextAttemptAt},
                   updated_at = GREATEST(updated_at + interval '1 microsecond', {now}),
                   finished_at = CASE WHEN {finished} THEN GREATEST(updated_at + interval '1 microsecond', {now}) END
             WHERE kind = {job.Kind} AND business_key = {job.BusinessKey} AND status NOT IN ({JobStatus.Succeeded}, {JobStatus.Cancelled})
               AND CASE WHEN {attempt} = {UnknownAttempt}
                        THEN status IN ({JobStatus.Queued}, {JobStatus.Scheduled})
                          OR status = {JobStatus.RetryScheduled} AND next_attempt_at <= clock_timestamp()
                        ELSE attempts = {attempt} END
            """, cancellationToken);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Kind} {BusinessKey}: the attempt's count failed to commit, but the database had applied it (its answer was lost); counted once")]
    private partial void LogCountAnswerLost(Exception exception, string kind, string businessKey);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {Kind}/{BusinessKey} ({JobId}) is cancelled, but its command (message {MessageId}) came back redelivered: an earlier delivery may have started an attempt before the cancel, and its effect (a charge at the gateway) would be in no record; check the remote side. Acked without running; the job's lastError says so")]
    private partial void LogCancelledRedelivery(string kind, string businessKey, Guid jobId, Guid? messageId);

    /// <summary>
    /// The warning that goes with <see cref="RecordAttemptBeforeCancelAsync"/>'s note, in <paramref name="logger"/>'s category
    /// (the caller's): the attempt of <paramref name="messageId"/> ran before the cancel of job <paramref name="jobId"/> took
    /// effect and was counted on it. <paramref name="error"/> is how the attempt failed; null for one whose consumer succeeded
    /// but whose inbox batch failed (settled again alone, <see cref="Inbox.InboxBatcher"/>).
    /// </summary>
    public static void LogAttemptBeforeCancel(ILogger logger, string kind, string businessKey, Guid jobId, Guid? messageId, Exception? error = null) =>
        LogAttemptBeforeCancel(logger, kind, businessKey, jobId, messageId,
            error is null ? "it succeeded, but its inbox batch failed and it was settled again alone" : $"it failed: {Describe(error)}");

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {Kind}/{BusinessKey} ({JobId}) was cancelled after its attempt (message {MessageId}) ran, before that attempt was counted ({Outcome}): its effect (a charge at the gateway) may have applied and is in no record; check the remote side. The attempt is counted, the job stays cancelled, and its lastError says so")]
    private static partial void LogAttemptBeforeCancel(ILogger logger, string kind, string businessKey, Guid jobId, Guid? messageId, string outcome);
}

/// <summary>What the inbox statement found for a message.</summary>
public enum InboxClaim
{
    /// <summary>Handled already (the inbox row exists): ack without running.</summary>
    Duplicate,

    /// <summary>Another copy of it is in the same inbox batch and runs instead: ack once the batch commits.</summary>
    DuplicateInBatch,

    /// <summary>New, but the job succeeded already or was cancelled: record it as handled, do not run.</summary>
    NotRunnable,

    /// <summary>New and claimed: run the consumer.</summary>
    Run,
}

/// <summary>The inbox statement's answer.</summary>
public sealed class ClaimRow
{
    public bool Inserted { get; init; }

    /// <summary>The job's row id when the job was claimed (it may run); null when it may not.</summary>
    public Guid? JobId { get; init; }

    /// <summary>The attempt the claim counted, when it claimed the job.</summary>
    public int? Attempt { get; init; }

    /// <summary>The fingerprint of the command the job row was created for (ADR 0011), when it has one.</summary>
    public byte[]? JobFingerprint { get; init; }

    /// <summary>The claim created the job's row: the statement's snapshot had none.</summary>
    public bool CreatedJobRow { get; init; }

    /// <summary>
    /// When it claimed the job, the job's first command (<see cref="ClaimedFingerprints"/>). Read from the
    /// row as this claim wrote it, which names the same command as before: a takeover moves the first
    /// command's fingerprint to the original column, and a row this claim creates is its own command's.
    /// </summary>
    public byte[]? FirstFingerprint { get; init; }

    /// <summary>The id of the inbox transaction (<c>xid8</c> as text), assigned by the claim's write; null if it wrote nothing.</summary>
    public string? TransactionId { get; init; }
}

/// <summary>An attempt counted outside the inbox transaction: the job's row id and its attempts now, when it was counted.</summary>
public sealed class CountedAttempt
{
    public Guid? Id { get; init; }

    public int? Attempts { get; init; }

    /// <summary>Nothing was written: the message claims a job id that no row the statement saw holds.</summary>
    public bool ClaimedIdFree { get; init; }

    /// <summary>
    /// The id of the count's transaction (<c>xid8</c> as text) when it counted, as <see cref="Inbox.CommitOutcome.TransactionIdSql"/>
    /// reads it (written out in the statement: an interpolated value would be sent as a parameter).
    /// </summary>
    public string? TransactionId { get; init; }
}
