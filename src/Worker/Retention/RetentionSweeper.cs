using System.Diagnostics.Metrics;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Redelivery;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Worker.Retention;

public sealed record SweepResult(int InboxRows, int Jobs, int AuditRows);

/// <summary>
/// Deletes what is past its retention window, in small batches. Runs in every worker; concurrent
/// sweeps never wait for each other: each batch takes only rows no other transaction holds (SKIP LOCKED).
/// </summary>
public sealed partial class RetentionSweeper(
    IDbContextFactory<ConveyorDbContext> dbFactory,
    IOptions<RetentionOptions> options,
    JobMetrics metrics,
    TimeProvider time,
    ILogger<RetentionSweeper> logger) : BackgroundService
{
    private readonly Counter<long> _deleted = metrics.Meter.CreateCounter<long>(
        "conveyor.retention.deleted", "{row}", "Rows the retention sweep deleted, by table");

    private readonly Counter<long> _failures = metrics.Meter.CreateCounter<long>(
        "conveyor.retention.failures", "{sweep}", "Retention sweeps that failed (each is tried again at the next interval)");

    protected override Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!options.Value.Enabled)
        {
            return Task.CompletedTask;
        }

        // Exported from the start at 0: Prometheus' increase() cannot see the first failure of a
        // series that appears with it, so an alert on failures would miss a sweep that always fails.
        _failures.Add(0);
        return Periodically.RunAsync(TimeSpan.FromSeconds(options.Value.IntervalSeconds), time, SweepQuietlyAsync, stoppingToken);
    }

    /// <summary>
    /// One sweep as of the database's now; a failure is logged and the next period tries again. The
    /// database's clock, not this worker's: the dispatcher's job updates and the leases are written by
    /// it, and every worker's sweep then measures a window alike, whatever its own clock says.
    /// </summary>
    private async Task SweepQuietlyAsync(CancellationToken stoppingToken)
    {
        try
        {
            var swept = await SweepAsync(await DatabaseNowAsync(stoppingToken), stoppingToken);
            if (swept.InboxRows + swept.Jobs + swept.AuditRows > 0)
            {
                LogSwept(swept.InboxRows, swept.Jobs, swept.AuditRows);
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException
            && !(exception is OperationCanceledException && stoppingToken.IsCancellationRequested))
        {
            _failures.Add(1);
            LogSweepFailed(exception);
        }
    }

    private async Task<DateTimeOffset> DatabaseNowAsync(CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        return await db.Database.SqlQuery<DateTimeOffset>($"SELECT clock_timestamp() AS \"Value\"").SingleAsync(cancellationToken);
    }

    /// <summary>
    /// Locks finished jobs older than <c>@before</c>, at most <c>@batch</c>, that nothing could still
    /// deliver the command of, and returns their ids: per kind and finished status one range of the
    /// (kind, status, created_at, id) index (<see cref="JobIndexRanges"/>; created_at &lt;= updated_at),
    /// so a sweep reads the rows it deletes and those kept, not the live jobs. The first of a batch's two
    /// statements (see <see cref="DeleteLockedJobsSql"/>).
    /// </summary>
    internal const string LockFinishedJobsSql = $"""
        WITH RECURSIVE {JobIndexRanges.KindStatusPairs}
        SELECT r.id AS "Value"
          FROM job_pairs p
         CROSS JOIN LATERAL (
               SELECT j.id FROM jobs j
                WHERE j.kind = p.kind AND j.status = p.status AND j.status IN {JobIndexRanges.Statuses}
                  AND j.created_at < @before AND j.updated_at < @before
                  AND {NothingDeliversItsCommand}
                LIMIT @batch
                  FOR UPDATE OF j SKIP LOCKED) r
         WHERE p.status = ANY(@finished)
         LIMIT @batch
        """;

    /// <summary>
    /// Deletes the jobs <see cref="LockFinishedJobsSql"/> locked (<c>@ids</c>) that nothing delivers the
    /// command of still, as a new statement sees it. The lock statement tested that as of its own start, and
    /// it may lock a row much later in its scan: a replay that found the job finished and committed its inbox
    /// row meanwhile (its claim had the job's row locked, and let go of it at its commit) was not seen, and
    /// the job went. A resubmission of its business key then got a new job whose command the inbox acked as
    /// a duplicate of that replay, unrun: queued for good. Tested again once the jobs are locked, a replay
    /// that committed before is seen, and one that had not cannot yet have found the job (every inbox path
    /// locks the job's row before it writes a status from it: the single claim's upsert, the batched claim's
    /// FOR NO KEY UPDATE, the lease path's attempt after its lease): it waits for the sweep, finds no job,
    /// and runs the command as a new one, as it would have just after the sweep.
    /// </summary>
    internal const string DeleteLockedJobsSql = $"""
        DELETE FROM jobs j WHERE j.id = ANY(@ids) AND {NothingDeliversItsCommand}
        """;

    /// <summary>
    /// No inbox row of the job's command (by the inbox's primary key: a job consumer's inbox id is its
    /// queue's name, which is the job's kind), and no stored command of it, by job id or, for rows stored
    /// before that column, by a scheduled job's dedupe key.
    /// </summary>
    private const string NothingDeliversItsCommand = $"""
        NOT EXISTS (SELECT 1 FROM inbox i WHERE i.consumer_id = j.kind AND i.message_key = j.business_key)
                  AND NOT EXISTS (SELECT 1 FROM scheduled_messages s WHERE s.job_id = j.id)
                  AND NOT EXISTS (SELECT 1 FROM scheduled_messages s WHERE s.dedupe_key = '{ScheduledMessage.ScheduledJobKeyPrefix}' || j.id::text)
        """;

    /// <summary>
    /// One batch of the inbox sweep: the next <c>@batch</c> rows from <c>@from</c> on in
    /// <c>received_at</c> order, leaving out live leases and rows another transaction holds; those among
    /// them received before <c>@before</c> are deleted. Returns the latest <c>received_at</c> among the rows
    /// taken and how many were deleted (see <see cref="SweepInboxAsync"/>).
    /// </summary>
    /// <remarks>
    /// Written so that its plan is the same whatever the inbox's statistics say (ADR 0010): an ordered
    /// scan of the <c>received_at</c> index that stops after <c>@batch</c> rows, then each row by its
    /// ctid. The scan has one bound on <c>received_at</c> besides its order and its LIMIT, which makes
    /// reading the index and stopping early the cheap plan under any statistics: bounded on both sides,
    /// the scan is a range the planner rates by its statistics (never analysed: a fixed 0.5 %), and it
    /// then read the whole range into a bitmap and sorted it, however few rows a batch needs. The status
    /// test is the negative one (an inbox row is <c>done</c> or a <c>processing</c> lease), which the
    /// planner rates as keeping nearly every row whatever it knows: as "done, or processing and lapsed",
    /// a never-analysed inbox made it expect a handful of rows and read the whole table sequentially to
    /// find them, at every sweep. The window's end is tested on the rows taken: a batch takes at most
    /// <c>@batch</c> rows received since, only once the old ones are gone. The one plan left to the
    /// table's size: a never-analysed inbox is guessed at about a sixteenth of its rows (from its
    /// columns' widths), and below some 250,000 rows reading it whole and sorting it looks cheaper, which
    /// reads that small table once per batch until autovacuum first analyses it.
    /// </remarks>
    internal const string InboxSweepSql = $"""
        WITH batch AS MATERIALIZED (
            SELECT ctid AS row_id, received_at FROM inbox
             WHERE received_at >= @from AND (status <> '{InboxStatus.Processing}' OR lease_expires_at < @before)
             ORDER BY received_at
             LIMIT @batch
               FOR UPDATE SKIP LOCKED),
        swept AS (
            DELETE FROM inbox i USING batch b
             WHERE i.ctid = b.row_id AND b.received_at < @before
            RETURNING 1)
        SELECT (SELECT max(received_at) FROM batch) AS last_received_at, (SELECT count(*) FROM swept) AS deleted
        """;

    /// <summary>One full sweep as of <paramref name="now"/>.</summary>
    public async Task<SweepResult> SweepAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        var settings = options.Value;
        var inboxBefore = now.AddHours(-settings.InboxHours);
        var jobsBefore = now.AddHours(-settings.JobHours);
        var auditBefore = now.AddHours(-settings.AuditHours);
        var batch = settings.BatchSize;

        var inbox = await SweepInboxAsync(inboxBefore, batch, cancellationToken);
        // A finished job is kept while anything could still deliver its command, so that delivery meets
        // the job's final status instead of no row at all, which runs the job again:
        // - a stored command (a job scheduled for later that ran early through another delivery, a
        //   redelivery the broker keeps refusing), by job_id or, for rows stored before that column,
        //   by a scheduled job's dedupe key. Once the row is published the command may still wait in its
        //   queue, so the dispatcher starts a finished job's window again then (JobHours from the publish).
        // - an inbox row of its command. A replay that finds the job finished is recorded in the inbox
        //   with its own received_at while the job keeps its old updated_at; were the job swept first,
        //   a resubmission of its business key would get a new row whose command the inbox acks as a
        //   duplicate, unrun, leaving it queued. Checked here rather than on the claim (dropping that
        //   inbox row or touching the job there), which keeps the consume path's one statement as it is,
        //   and holds for every inbox path (single, batched, lease). A job consumer's inbox id is its
        //   queue's name, which is the job's kind (JobKinds), so the lookup is the inbox's primary key.
        //   Tested again once the batch's jobs are locked, for a replay that committed meanwhile
        //   (DeleteLockedJobsSql).
        // The inbox sweep above runs first: a job whose inbox row expired now goes in this same sweep.
        var jobs = await SweepJobsAsync(jobsBefore, batch, cancellationToken);
        // Finished operations by their start. One still marked running whose progress stopped that long ago
        // goes too: a live operation writes its progress twice a second, and an abandoned one is marked
        // interrupted only when an Api of its vhost reads operations, which may never happen again.
        var audit = await DeleteInBatchesAsync("error_queue_operations", db => db.Database.ExecuteSqlInterpolatedAsync($"""
            DELETE FROM error_queue_operations WHERE id IN (
                SELECT id FROM error_queue_operations
                 WHERE created_at < {auditBefore} AND (state <> 'running' OR updated_at < {auditBefore})
                 LIMIT {batch} FOR UPDATE SKIP LOCKED)
            """, cancellationToken), batch, cancellationToken);
        return new SweepResult(inbox, jobs, audit);
    }

    /// <summary>
    /// Deletes the inbox rows received before <paramref name="before"/>, batch after batch along the
    /// <c>received_at</c> index (<see cref="InboxSweepSql"/>), each batch starting where the last one
    /// ended: a batch that started from the index's beginning again would pass, in the index, over every
    /// row the batches before it deleted, until a vacuum. Besides handled messages: the lease row of a
    /// long job whose worker died and whose message never came back to take it over (purged, say), once
    /// the lease has been out for the inbox's window. A message that does come back later is claimed
    /// afresh, as it would be had the row been taken over. A live lease (a job still renewing it) is never
    /// old enough. A row another transaction holds is passed over and left for the next sweep.
    /// </summary>
    private async Task<int> SweepInboxAsync(DateTimeOffset before, int batchSize, CancellationToken cancellationToken)
    {
        var total = 0;
        var from = DateTimeOffset.MinValue;
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        while (true)
        {
            // Not composed (no SingleAsync): EF would wrap the statement, and a data-modifying WITH cannot be nested.
            var batch = (await db.Database.SqlQueryRaw<InboxBatch>(
                InboxSweepSql,
                new NpgsqlParameter<DateTimeOffset>("from", from),
                new NpgsqlParameter<DateTimeOffset>("before", before),
                new NpgsqlParameter<int>("batch", batchSize)).ToListAsync(cancellationToken))[0];
            var deleted = (int)batch.Deleted;
            total += deleted;
            if (deleted > 0)
            {
                _deleted.Add(deleted, new KeyValuePair<string, object?>("table", "inbox"));
            }

            // A whole batch deleted: there may be more. Any row kept means the batch reached the rows
            // received since (or ran out of rows); a row another transaction held was not taken at all.
            if (deleted < batchSize || batch.LastReceivedAt is not { } last)
            {
                return total;
            }

            // From the last row's time on, not past it: rows received at the same instant may not all
            // have fitted in the batch. The deleted ones are gone, so each batch takes new rows.
            from = last;
        }
    }

    private sealed record InboxBatch(DateTimeOffset? LastReceivedAt, long Deleted);

    /// <summary>
    /// Deletes the finished jobs past <paramref name="before"/>, batch after batch, each in a transaction of
    /// two statements: the jobs locked (<see cref="LockFinishedJobsSql"/>), then deleted unless something
    /// delivers their command after all (<see cref="DeleteLockedJobsSql"/>). Stops after a batch that
    /// locked fewer than a whole one.
    /// </summary>
    private async Task<int> SweepJobsAsync(DateTimeOffset before, int batchSize, CancellationToken cancellationToken)
    {
        var total = 0;
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        while (true)
        {
            int locked, deleted;
            await using (var transaction = await db.Database.BeginTransactionAsync(cancellationToken))
            {
                var ids = await LockFinishedJobsAsync(db, before, batchSize, cancellationToken);
                locked = ids.Length;
                deleted = locked == 0 ? 0 : await DeleteLockedJobsAsync(db, ids, cancellationToken);
                await transaction.CommitAsync(cancellationToken);
            }

            total += deleted;
            if (deleted > 0)
            {
                _deleted.Add(deleted, new KeyValuePair<string, object?>("table", "jobs"));
            }

            if (locked < batchSize)
            {
                return total;
            }
        }
    }

    /// <summary>The first statement of a batch of the job sweep, in the caller's transaction (<see cref="LockFinishedJobsSql"/>).</summary>
    internal static async Task<Guid[]> LockFinishedJobsAsync(ConveyorDbContext db, DateTimeOffset before, int batchSize, CancellationToken cancellationToken) =>
        [.. await db.Database.SqlQueryRaw<Guid>(
            LockFinishedJobsSql,
            new NpgsqlParameter<string[]>("finished", [JobStatus.Succeeded, JobStatus.DeadLettered, JobStatus.Cancelled]),
            new NpgsqlParameter<DateTimeOffset>("before", before),
            new NpgsqlParameter<int>("batch", batchSize)).ToListAsync(cancellationToken)];

    /// <summary>The second statement of a batch of the job sweep, in the caller's transaction (<see cref="DeleteLockedJobsSql"/>).</summary>
    internal static Task<int> DeleteLockedJobsAsync(ConveyorDbContext db, Guid[] ids, CancellationToken cancellationToken) =>
        db.Database.ExecuteSqlRawAsync(DeleteLockedJobsSql, [new NpgsqlParameter<Guid[]>("ids", ids)], cancellationToken);

    private async Task<int> DeleteInBatchesAsync(string table, Func<ConveyorDbContext, Task<int>> deleteBatch, int batchSize, CancellationToken cancellationToken)
    {
        var total = 0;
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        while (true)
        {
            var deleted = await deleteBatch(db);
            total += deleted;
            // Per batch: a sweep that fails halfway still counts what it deleted.
            if (deleted > 0)
            {
                _deleted.Add(deleted, new KeyValuePair<string, object?>("table", table));
            }

            if (deleted < batchSize)
            {
                return total;
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Retention: deleted {InboxRows} inbox rows, {Jobs} jobs, {AuditRows} audit rows")]
    private partial void LogSwept(int inboxRows, int jobs, int auditRows);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The retention sweep failed; it runs again at the next interval")]
    private partial void LogSweepFailed(Exception exception);
}
