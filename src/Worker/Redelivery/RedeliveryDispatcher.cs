using System.Diagnostics.Metrics;
using System.Globalization;
using System.Runtime.ExceptionServices;
using Conveyor.Contracts;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Redelivery;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Runs in every worker: claims due rows with FOR UPDATE SKIP LOCKED, publishes them with
/// confirms, deletes them, commits. Sleeps until the next due time or a NOTIFY of a row due before it
/// (<see cref="SleepAsync"/>); the NOTIFY only wakes it early, so a dispatcher that cannot LISTEN polls every
/// <see cref="DispatcherOptions.MaxIdleSeconds"/> instead. A crash after a confirm and before the
/// commit republishes once more; the inbox absorbs it. Each row settles on its own
/// (<see cref="SettleAsync"/>): one that cannot be published never holds back the others, and a
/// round cut short (a shutdown, a publish timeout) still commits what its confirmed rows settled.
/// </summary>
public sealed partial class RedeliveryDispatcher(
    IDbContextFactory<ConveyorDbContext> dbFactory,
    BrokerPublisher publisher,
    IOptions<DispatcherOptions> options,
    JobMetrics metrics,
    TimeProvider time,
    ILogger<RedeliveryDispatcher> logger) : BackgroundService
{
    private readonly Histogram<double> _lateness = metrics.Meter.CreateHistogram(
        "conveyor.redelivery.lateness", "s", "How long after its due time a scheduled message was published",
        advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = JobMetrics.SecondsBuckets });
    private readonly Counter<long> _published = metrics.Meter.CreateCounter<long>(
        "conveyor.redelivery.published", "{message}", "Scheduled messages published by the dispatcher");
    private readonly Counter<long> _unpublishable = metrics.Meter.CreateCounter<long>(
        "conveyor.redelivery.unpublishable", "{message}", "Scheduled messages that could not be published and were moved to their destination's _error queue");

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!options.Value.DispatcherEnabled)
        {
            return;
        }

        var failures = 0;
        var emptyRounds = 0;
        NpgsqlConnection? listener = null;
        var listenAgainAt = DateTimeOffset.MinValue;
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                try
                {
                    if (listener is null && time.GetUtcNow() >= listenAgainAt)
                    {
                        // At most once per idle poll: a session refused (a connection limit) is not asked
                        // for again on every busy round.
                        listener = await TryListenAsync(stoppingToken);
                        listenAgainAt = time.GetUtcNow().AddSeconds(options.Value.MaxIdleSeconds);
                    }

                    var dispatched = await DispatchDueAsync(stoppingToken);
                    if (listener is not null)
                    {
                        // What they announced is in the table now (a NOTIFY is sent at its row's commit), which
                        // the next due time is read from: they need no round of their own.
                        await DrainNotificationsAsync(listener, stoppingToken);
                    }

                    var (wait, nextDue) = await TimeUntilNextDueAsync(stoppingToken);
                    // Only a round that went through ends the backoff: a listener that connects while every
                    // round fails (the broker away, PostgreSQL up) must not retry every half second.
                    failures = 0;
                    if (wait <= TimeSpan.Zero && dispatched == 0)
                    {
                        // Rows are due, yet none could be claimed: another dispatcher holds them (SKIP
                        // LOCKED), for as long as its publishes take (minutes in a broker alarm). Asking
                        // again at once would spin on the database until it lets go.
                        wait = ClaimedElsewhereBackoff(++emptyRounds);
                    }
                    else
                    {
                        emptyRounds = 0;
                    }

                    if (wait <= TimeSpan.Zero)
                    {
                        continue;
                    }

                    if (listener is not null)
                    {
                        // Returns early when a NOTIFY announces a row due before the next one read.
                        await SleepAsync(listener, wait, nextDue, stoppingToken);
                    }
                    else
                    {
                        await Task.Delay(wait, time, stoppingToken);
                    }
                }
                catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception exception) when (exception is not OutOfMemoryException)
                {
                    failures++;
                    emptyRounds = 0;
                    LogDispatchFailed(exception);
                    if (listener is not null)
                    {
                        // The session may be what failed (PostgreSQL restarted): the next round opens another.
                        await listener.DisposeAsync();
                        listener = null;
                        listenAgainAt = DateTimeOffset.MinValue;
                    }

                    var backoff = TimeSpan.FromMilliseconds(Math.Min(30_000, 250 * Math.Pow(2, Math.Min(failures, 7))));
                    await Task.Delay(backoff, time, stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
                }
            }
        }
        finally
        {
            if (listener is not null)
            {
                await listener.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// The database the LISTEN session connects to, when not the store's own: a seam for tests, which
    /// point it at a database that is not there.
    /// </summary>
    internal string? ListenConnectionString { get; set; }

    /// <summary>
    /// Publishes every row that is due now, batch by batch: at most <see cref="DispatcherOptions.BatchSize"/>
    /// rows and <see cref="DispatcherOptions.MaxBatchBytes"/> of bodies and headers each, and only those
    /// rows locked while it publishes: the due rows past its budget are free for another dispatcher. Once a batch's
    /// publishes have begun, its bookkeeping (the jobs dead-lettered, the DELETE, the rows kept for later, the commit) runs to the
    /// end whatever becomes of the publishes or of <paramref name="cancellationToken"/>, bounded by the
    /// server's <c>statement_timeout</c>: rolled back, it would leave the rows the broker had confirmed
    /// for another dispatcher to publish again, and copy again to <c>_error</c> those moved there. A
    /// batch cut short (a shutdown, a publish timeout, a reconnect that failed) leaves the rows it did
    /// not settle as they were, free for any dispatcher once committed, and then throws what cut it short.
    /// </summary>
    public async Task<int> DispatchDueAsync(CancellationToken cancellationToken)
    {
        var total = 0;
        var batchSize = options.Value.BatchSize;
        while (true)
        {
            await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
            await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
            // A dispatcher that vanishes mid-batch (its node died, its network went) sends nothing more, not
            // even a FIN: the server would keep its session, and its claim, until TCP keepalive gave up on
            // it (over two hours by default), and every other dispatcher would pass over those rows (SKIP
            // LOCKED). A live one is idle in its transaction only while it publishes (ClaimIdleLimit), so
            // past that the server ends the session and the rows are free again.
            await db.Database.ExecuteSqlInterpolatedAsync(
                $"SELECT set_config('idle_in_transaction_session_timeout', {ClaimIdleLimit(options.Value).TotalMilliseconds.ToString(CultureInfo.InvariantCulture)}, true)",
                cancellationToken);
            var claimed = await ClaimAsync(db, batchSize, cancellationToken);
            if (claimed.Count == 0)
            {
                // Nothing was locked; disposing the transaction rolls it back, which a shutdown cannot
                // turn into a failed commit.
                return total;
            }

            var ids = WithinBudget(claimed, options.Value.MaxBatchBytes);
            if (ids.Length < claimed.Count)
            {
                // The rows claimed past the budget are not this batch's: locked until its commit, no other
                // dispatcher could publish them meanwhile. Rolling the claim back frees them all, and the rows
                // within the budget are claimed again as they are loaded; one taken by another dispatcher in
                // between (or no longer due) is that one's, and this batch goes without it.
                await transaction.RollbackToSavepointAsync(ClaimSavepoint, cancellationToken);
            }

            var due = await db.ScheduledMessages
                .FromSql($"SELECT * FROM scheduled_messages WHERE id = ANY({ids}) AND due_at <= clock_timestamp() FOR UPDATE SKIP LOCKED")
                .OrderBy(m => m.DueAt)
                .AsNoTracking()
                .ToListAsync(cancellationToken);
            if (due.Count == 0)
            {
                // All taken by other dispatchers since the claim: claim again.
                continue;
            }

            // From here on nothing takes the caller's token but the publishes themselves.
            var round = new Round(db, cancellationToken);
            var results = await PublishWithinTimeoutAsync(round, due, timeout => publisher.PublishAsync(due, timeout));
            var settled = new List<(ScheduledMessage Message, Settlement Settlement, PublishResult Result)>(due.Count);
            foreach (var (message, result) in due.Zip(results))
            {
                settled.Add(await SettleAsync(round, message, result));
            }

            var published = time.GetUtcNow();
            // In the transaction that deletes their rows: a crash leaves both the row and the job's status
            // as they were (the row is moved to _error again), or neither.
            var deadLettered = new List<(ScheduledMessage Message, string Kind)>();
            foreach (var (message, _, result) in settled.Where(s => s.Settlement == Settlement.MovedToError))
            {
                if (await DeadLetterJobAsync(db, message, ReasonOf(result), published, CancellationToken.None) is { } kind)
                {
                    deadLettered.Add((message, kind));
                }
            }

            var doneIds = settled.Where(s => s.Settlement is Settlement.Published or Settlement.MovedToError).Select(s => s.Message.Id).ToArray();
            var keptJobIds = FinishedJobsToKeep(settled.Where(s => s.Settlement == Settlement.Published).Select(s => s.Message));
            // Each row's lateness by the database's clock, which its due time was set by; a row the broker
            // refused is late since its first refusal (LEAST skips a null), as ScheduledBacklog counts it: its due time moved on
            // with every try, and counted from the last one, a command kept for an hour read as a second
            // late. In the same statement, the finished jobs of the published rows start their retention window again
            // (FinishedJobsToKeep); "IS TRUE", as in KeepForLaterAsync: each job by its primary key,
            // never through the status index.
            var deleted = await db.Database.SqlQuery<DeletedRow>(
                    $"""
                    WITH kept AS (
                        UPDATE jobs SET updated_at = GREATEST(updated_at + interval '1 microsecond', clock_timestamp())
                         WHERE id = ANY({keptJobIds}) AND (status IN ({JobStatus.Succeeded}, {JobStatus.DeadLettered}, {JobStatus.Cancelled})) IS TRUE)
                    DELETE FROM scheduled_messages WHERE id = ANY({doneIds})
                    RETURNING id, EXTRACT(EPOCH FROM clock_timestamp() - LEAST(due_at, first_refused_at))::float8 AS seconds_late
                    """)
                .ToListAsync(CancellationToken.None);
            var secondsLate = deleted.ToDictionary(r => r.Id, r => r.SecondsLate);
            var later = settled.Where(s => s.Settlement == Settlement.Later).ToList();
            if (later.Count > 0)
            {
                var backoff = TimeSpan.FromSeconds(options.Value.FailedPublishBackoffSeconds);
                var retryAt = await KeepForLaterAsync(db, later.Select(s => (s.Message, ReasonOf(s.Result))).ToList(), backoff, CancellationToken.None);
                var refused = later.Count(s => s.Result.Outcome == PublishOutcome.Refused);
                if (refused > 0)
                {
                    LogRefused(refused, retryAt);
                }

                if (later.FirstOrDefault(s => s.Result.Outcome != PublishOutcome.Refused) is { Message: not null } failed)
                {
                    LogFailed(later.Count - refused, retryAt, failed.Result.Error);
                }
            }

            // Not cancelled by a shutdown: these commands are confirmed, and a commit cut off would
            // publish them again after the restart (harmless, but avoidable), with a failed
            // transaction in the log.
            await transaction.CommitAsync(CancellationToken.None);
            var confirmed = settled.Where(s => s.Settlement == Settlement.Published).Select(s => s.Message).ToList();
            foreach (var message in confirmed)
            {
                _lateness.Record(Math.Max(0, secondsLate.GetValueOrDefault(message.Id)));
            }

            _published.Add(confirmed.Count);
            _unpublishable.Add(settled.Count(s => s.Settlement == Settlement.MovedToError));
            foreach (var (message, kind) in deadLettered)
            {
                metrics.DeadLettered(kind);
                LogJobDeadLettered(message.JobId!.Value, kind, message.Id);
            }

            total += doneIds.Length;
            round.ThrowIfCutShort();
            if (claimed.Count < batchSize && ids.Length == claimed.Count)
            {
                return total;
            }
        }
    }

    /// <summary>
    /// The ids of the longest run of <paramref name="claimed"/>, in their due order, whose bytes add up
    /// to at most <paramref name="maxBytes"/>; the first row even when it alone is larger, so no row is
    /// ever held back for its size.
    /// </summary>
    internal static long[] WithinBudget(IReadOnlyList<ClaimedRow> claimed, long maxBytes)
    {
        var count = 0;
        var bytes = 0L;
        foreach (var row in claimed)
        {
            bytes += row.Bytes;
            if (count > 0 && bytes > maxBytes)
            {
                break;
            }

            count++;
        }

        return claimed.Take(count).Select(c => c.Id).ToArray();
    }

    private const string ClaimSavepoint = "claim";

    /// <summary>
    /// Locks up to <paramref name="batchSize"/> due rows, in due order, and reads their sizes. Due by the
    /// database's clock, as every writer counts due times (RedeliveryStore): the pods' own clocks may
    /// disagree with it and with each other. Sizes only: octet_length reads a body's length from its
    /// TOAST pointer, so the bodies of rows past the byte budget are never read. Under a savepoint, whose
    /// rollback lets go of the rows past the budget at once; the savepoint is sent with the claim, as one
    /// batch, so that it costs every batch no round trip of its own (EF's CreateSavepointAsync is one).
    /// </summary>
    private static async Task<List<ClaimedRow>> ClaimAsync(ConveyorDbContext db, int batchSize, CancellationToken cancellationToken)
    {
        var connection = (NpgsqlConnection)db.Database.GetDbConnection();
        await using var batch = new NpgsqlBatch(connection) { Transaction = (NpgsqlTransaction)db.Database.CurrentTransaction!.GetDbTransaction() };
        batch.BatchCommands.Add(new NpgsqlBatchCommand($"SAVEPOINT {ClaimSavepoint}"));
        batch.BatchCommands.Add(new NpgsqlBatchCommand("""
            SELECT id, octet_length(body)::bigint + octet_length(headers::text) AS bytes
              FROM scheduled_messages WHERE due_at <= clock_timestamp()
             ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED
            """) { Parameters = { new NpgsqlParameter<int> { TypedValue = batchSize } } });
        var claimed = new List<ClaimedRow>();
        // The savepoint returns no rows: the reader starts at the claim's.
        await using var reader = await batch.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            claimed.Add(new ClaimedRow(reader.GetInt64(0), reader.GetInt64(1)));
        }

        return claimed;
    }

    /// <summary>A row a batch has locked, and the bytes of its body and headers.</summary>
    internal sealed record ClaimedRow(long Id, long Bytes);

    /// <summary>
    /// What becomes of a row after its publish in the batch. A channel or connection that failed fails
    /// every publish in flight on it, and RabbitMQ closes the whole connection for one message it cannot
    /// take: a row whose publish failed is published again alone, so that one bad row never holds back
    /// the others. A row the broker refuses for what it is, or that cannot be published at all, is
    /// moved to its destination's <c>_error</c> queue with the reason; while that queue does not exist
    /// (MassTransit declares it at its first message) it stays, for another try later: never lost. A
    /// row whose publish or move the <paramref name="round"/> cut short stays as it was. Each publish
    /// alone and each move first renews the claim (<see cref="Round.RenewClaimAsync"/>).
    /// </summary>
    private async Task<(ScheduledMessage Message, Settlement Settlement, PublishResult Result)> SettleAsync(
        Round round, ScheduledMessage message, PublishResult result)
    {
        if (result.Outcome == PublishOutcome.Failed)
        {
            await round.RenewClaimAsync();
            result = (await PublishWithinTimeoutAsync(round, [message], async timeout => [await publisher.PublishAloneAsync(message, timeout)]))[0];
        }

        switch (result.Outcome)
        {
            case PublishOutcome.Confirmed:
                return (message, Settlement.Published, result);
            case PublishOutcome.Unsettled:
                return (message, Settlement.Unsettled, result);
            case PublishOutcome.Refused or PublishOutcome.Failed:
                return (message, Settlement.Later, result);
        }

        var reason = ReasonOf(result);
        var kind = await round.RenewClaimAsync(message.JobId) ?? KindOfQueue(message.Destination);
        var moved = (await PublishWithinTimeoutAsync(
            round, [message], async timeout => [await publisher.MoveToErrorQueueAsync(message, kind, reason, time.GetUtcNow(), timeout)]))[0];
        if (moved.Outcome == PublishOutcome.Unsettled)
        {
            return (message, Settlement.Unsettled, result);
        }

        if (moved.Outcome != PublishOutcome.Confirmed)
        {
            LogNotMovedToError(message.Id, message.Destination, reason, moved.Error);
            return (message, Settlement.Later, result);
        }

        LogMovedToError(message.Id, message.Destination, reason);
        return (message, Settlement.MovedToError, result);
    }

    private static string ReasonOf(PublishResult result) => result.Error ?? "no reason given";

    /// <summary>
    /// The job kind whose commands <paramref name="queue"/> holds, for a row that names no job (a lease
    /// deferral, a row stored before rows named their job, a job whose row is gone): job queues are named
    /// after their kind, and the error pipe names the endpoint's kind on every copy, with a job row or without.
    /// </summary>
    private static string? KindOfQueue(string queue) => JobKinds.All.Contains(queue, StringComparer.Ordinal) ? queue : null;

    /// <summary>
    /// The longest a dispatcher's claim may stay idle in its transaction before the server ends the
    /// session: its batch's publishes and one more cut short by <see cref="DispatcherOptions.PublishTimeoutSeconds"/>
    /// (a row published alone, a move to <c>_error</c>), each twice over, and 30 s around them. The rows
    /// published alone or moved one by one may take far longer together, so each renews the claim first
    /// (<see cref="Round.RenewClaimAsync"/>): a claim lapsed under them would leave every row for another
    /// round, which would copy to <c>_error</c> again those already moved there.
    /// </summary>
    internal static TimeSpan ClaimIdleLimit(DispatcherOptions options) => TimeSpan.FromSeconds(4 * options.PublishTimeoutSeconds + 30);

    /// <summary>
    /// Rows the broker did not take (no queue to route to, a publish that failed even alone, or
    /// unpublishable while their <c>_error</c> queue is missing) wait for another try
    /// <paramref name="backoff"/> from now by the database's clock, never lost; that time comes back.
    /// Their due time moves on with each try, so each keeps when it was first refused and why, which is what
    /// <see cref="ScheduledBacklog"/> reports: a row refused for good (its queue deleted) stays in
    /// sight. The job still waiting for such a row says so in its <c>last_error</c>, and its
    /// <c>next_attempt_at</c> is the next try, not a due time long past. Two statements, whatever the
    /// number of rows, in the dispatcher's transaction; the consume path is untouched.
    /// </summary>
    private static async Task<DateTimeOffset> KeepForLaterAsync(
        ConveyorDbContext db, IReadOnlyList<(ScheduledMessage Message, string Reason)> later, TimeSpan backoff,
        CancellationToken cancellationToken)
    {
        var ids = later.Select(l => l.Message.Id).ToArray();
        var reasons = later.Select(l => Bounded(l.Reason, ScheduledMessage.MaxRefusalLength)).ToArray();
        // On the database's clock, as due times are (RedeliveryStore); the time of the next try comes back.
        var kept = await db.Database.SqlQuery<RefusalTimes>($"""
            WITH at AS (SELECT clock_timestamp() AS now)
            UPDATE scheduled_messages s
               SET due_at = at.now + {backoff}, first_refused_at = COALESCE(s.first_refused_at, at.now), refusal = r.reason
              FROM unnest({ids}, {reasons}) AS r(id, reason), at
             WHERE s.id = r.id
            RETURNING at.now AS now, s.due_at AS retry_at
            """).ToListAsync(cancellationToken);
        // Every row is this round's, locked by its claim: each comes back, with the same two times.
        var (now, retryAt) = (kept[0].Now, kept[0].RetryAt);
        var waiting = later.Where(l => l.Message is { JobId: not null, JobAttempts: not null }).ToList();
        if (waiting.Count == 0)
        {
            return retryAt;
        }

        var jobIds = waiting.Select(l => l.Message.JobId!.Value).ToArray();
        var attempts = waiting.Select(l => l.Message.JobAttempts!.Value).ToArray();
        var errors = waiting.Select(l => Bounded(
            $"PublishRefused: the broker has not taken this job's stored command for queue {l.Message.Destination} "
            + $"since {(l.Message.FirstRefusedAt ?? now):O} ({l.Reason}); it is kept and tried again",
            JobTracker.MaxErrorLength)).ToArray();
        // As for a dead-lettered row: only while the job still waits for this row (see DeadLetterJobAsync).
        // "IS TRUE": each job found by its primary key, never through the status index, which statistics
        // taken while few jobs waited would choose during a backlog, reading every waiting job.
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs j SET last_error = r.error, next_attempt_at = {retryAt}, updated_at = GREATEST(j.updated_at + interval '1 microsecond', {now})
              FROM unnest({jobIds}, {attempts}, {errors}) AS r(id, attempts, error)
             WHERE j.id = r.id
               AND (j.attempts = r.attempts AND j.status IN ({JobStatus.Scheduled}, {JobStatus.Queued}, {JobStatus.RetryScheduled})) IS TRUE
            """, cancellationToken);
        return retryAt;
    }

    /// <summary>
    /// The jobs of stored commands just published, whose retention window starts again if they have
    /// finished (a scheduled job that ran early through another delivery, say). The retention sweep keeps
    /// such a job while the row waits, and the row is now gone while the command may still wait in its
    /// queue (a backlog, consumers paused): a sweep meanwhile deleted the job, and the command, meeting
    /// neither its job's final status nor an inbox row (long swept), ran the job again. Found by its
    /// row's job id or, for rows stored before that column, by a scheduled job's dedupe key, as the
    /// sweep finds them.
    /// </summary>
    private static Guid[] FinishedJobsToKeep(IEnumerable<ScheduledMessage> published) =>
        published
            .Select(m => m.JobId ?? (m.DedupeKey.StartsWith(ScheduledMessage.ScheduledJobKeyPrefix, StringComparison.Ordinal)
                && Guid.TryParseExact(m.DedupeKey.AsSpan(ScheduledMessage.ScheduledJobKeyPrefix.Length), "D", out var id) ? id : null))
            .OfType<Guid>()
            .Distinct()
            .ToArray();

    private static string Bounded(string text, int maxLength) => StoredText.Storable(text, maxLength);

    private sealed record DeletedRow(long Id, double SecondsLate);

    private sealed record RefusalTimes(DateTimeOffset Now, DateTimeOffset RetryAt);

    /// <summary>
    /// The job <paramref name="message"/> was stored for becomes <c>dead-lettered</c>, as a job whose
    /// message reached <c>_error</c> through its consumer does: else its status would wait forever for a
    /// publish that never comes. Only while the job still waits for this row: in a waiting status with
    /// the attempts it had when the row was stored. A delivery since (a copy moved back from
    /// <c>_error</c>, a duplicate, a republish) claimed it and counted an attempt, and that run settles
    /// the job, not this stale row; a job that is running, succeeded or was cancelled is left alone.
    /// The job is the row's <see cref="ScheduledMessage.JobId"/>, set by whoever stored it, never a
    /// header of the message. The job's kind when it was dead-lettered; null when the row names no job
    /// (stored before the column, a lease deferral) or the job has moved on.
    /// </summary>
    private static async Task<string?> DeadLetterJobAsync(
        ConveyorDbContext db, ScheduledMessage message, string reason, DateTimeOffset now, CancellationToken cancellationToken)
    {
        if (message is not { JobId: { } jobId, JobAttempts: { } attempts })
        {
            return null;
        }

        var error = $"UnpublishableRedelivery: its stored command could not be published ({reason}); moved to {message.Destination}{BrokerPublisher.ErrorQueueSuffix}";
        error = Bounded(error, JobTracker.MaxErrorLength);
        var kinds = await db.Database.SqlQuery<string>($"""
            UPDATE jobs SET status = {JobStatus.DeadLettered}, last_error = {error}, next_attempt_at = NULL,
                   updated_at = GREATEST(updated_at + interval '1 microsecond', {now}), finished_at = GREATEST(updated_at + interval '1 microsecond', {now})
             WHERE id = {jobId} AND attempts = {attempts}
               AND status IN ({JobStatus.Scheduled}, {JobStatus.Queued}, {JobStatus.RetryScheduled})
            RETURNING kind AS "Value"
            """).ToListAsync(cancellationToken); // not composed: an UPDATE cannot be a subquery
        return kinds.Count == 1 ? kinds[0] : null;
    }

    private enum Settlement
    {
        Published,
        MovedToError,
        Later,

        /// <summary>Cut short in this round: the row stays as it was, for the next round of any dispatcher.</summary>
        Unsettled,
    }

    /// <summary>
    /// One batch's publishes and what cut them short, if anything: after that nothing more is tried in
    /// the batch (a broker that let one publish time out would make each of the others wait as long,
    /// their rows locked), and the batch throws it once its bookkeeping is committed.
    /// </summary>
    private sealed class Round(ConveyorDbContext db, CancellationToken stopping)
    {
        public CancellationToken Stopping { get; } = stopping;

        public Exception? CutShort { get; set; }

        /// <summary>
        /// Starts the claim's idle time (<see cref="ClaimIdleLimit"/>) again with a statement in its
        /// transaction, before a row's publish alone or move to <c>_error</c>: each of those is bounded by
        /// <see cref="DispatcherOptions.PublishTimeoutSeconds"/>, but not all of a batch together. A dispatcher
        /// that vanished renews nothing, so its rows are still let go. Not cancelled by a shutdown (the batch's
        /// publishes have begun); a renewal that fails cuts the round short, as the claim is lost with it.
        /// The statement reads the kind of the job <paramref name="jobId"/> names, for a row about to be
        /// moved to <c>_error</c>, whose copy names its job's kind as every other <c>_error</c> copy of a
        /// job does; null when no job is named, its row is gone, or the round is cut short.
        /// </summary>
        public async Task<string?> RenewClaimAsync(Guid? jobId = null)
        {
            if (CutShort is not null)
            {
                return null;
            }

            try
            {
                var kinds = await db.Database.SqlQuery<string>($"""SELECT kind AS "Value" FROM jobs WHERE id = {jobId}""")
                    .ToListAsync(CancellationToken.None);
                return kinds.Count == 1 ? kinds[0] : null;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                CutShort = exception;
                return null;
            }
        }

        public void ThrowIfCutShort()
        {
            if (CutShort is { } exception)
            {
                ExceptionDispatchInfo.Throw(exception);
            }
        }
    }

    /// <summary>
    /// Publishes with confirms, waiting for them at most <see cref="DispatcherOptions.PublishTimeoutSeconds"/>:
    /// a dispatcher must not hold its rows locked and its transaction open for as long as a broker
    /// alarm lasts. Never throws, so the results of the messages the broker did confirm are never lost:
    /// a publish cut short (the timeout, the shutdown) or never sent (no channel could be had: a
    /// reconnect that failed) is <see cref="PublishOutcome.Unsettled"/>, and the <paramref name="round"/>
    /// records why. On a timeout the publisher's channel is given up (its outstanding confirms can no
    /// longer be matched; closing it may wait on the same stalled broker, so that happens aside).
    /// </summary>
    private async Task<IReadOnlyList<PublishResult>> PublishWithinTimeoutAsync(
        Round round, List<ScheduledMessage> messages, Func<CancellationToken, Task<IReadOnlyList<PublishResult>>> publish)
    {
        if (round.CutShort is not null)
        {
            return Unsettled(messages, "not tried: an earlier publish of its batch was cut short");
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(round.Stopping);
        timeout.CancelAfter(TimeSpan.FromSeconds(options.Value.PublishTimeoutSeconds));
        IReadOnlyList<PublishResult> results;
        try
        {
            results = await publish(timeout.Token);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // Only ever before anything was sent: the publisher could not open a channel.
            results = Unsettled(messages, exception.Message);
            if (!timeout.IsCancellationRequested)
            {
                round.CutShort = exception;
                return results;
            }
        }

        if (!results.Any(r => r.Outcome == PublishOutcome.Unsettled))
        {
            return results;
        }

        if (round.Stopping.IsCancellationRequested)
        {
            round.CutShort = new OperationCanceledException(round.Stopping);
        }
        else
        {
            publisher.Abandon();
            round.CutShort = new TimeoutException(
                $"The broker did not confirm {messages.Count} scheduled message(s) within {options.Value.PublishTimeoutSeconds} s; those not confirmed are released for another try.");
        }

        return results;
    }

    private static List<PublishResult> Unsettled(List<ScheduledMessage> messages, string reason) =>
        messages.Select(m => new PublishResult(m.Id, PublishOutcome.Unsettled, reason)).ToList();

    /// <summary>
    /// The pause after the <paramref name="emptyRounds"/>th round in a row that found due rows and
    /// claimed none: 50 ms, doubling up to 1 s. Short, since the rows are due and their holder may let
    /// go of them (roll back) at any moment; a NOTIFY ends it early all the same.
    /// </summary>
    private static TimeSpan ClaimedElsewhereBackoff(int emptyRounds) =>
        TimeSpan.FromMilliseconds(Math.Min(1_000, 50 * Math.Pow(2, Math.Min(emptyRounds - 1, 5))));

    /// <summary>
    /// The wait rounded up to whole milliseconds: Npgsql takes a timeout that truncates to zero
    /// milliseconds as "no timeout", so a row due in under a millisecond would wait for the next
    /// NOTIFY, however long that takes.
    /// </summary>
    internal static TimeSpan ListenTimeout(TimeSpan wait) => TimeSpan.FromMilliseconds(Math.Ceiling(wait.TotalMilliseconds));

    /// <summary>
    /// How long to sleep before the next round, and when the next row is due, in Unix milliseconds on the database's
    /// clock as a NOTIFY's payload says it (null when no row waits).
    /// </summary>
    private async Task<(TimeSpan Wait, long? NextDue)> TimeUntilNextDueAsync(CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        // On the database's clock, which due times are counted on (RedeliveryStore).
        var next = await db.Database
            .SqlQuery<NextDueRow>($"""
                SELECT EXTRACT(EPOCH FROM MIN(due_at) - clock_timestamp())::float8 AS seconds_left,
                       floor(EXTRACT(EPOCH FROM MIN(due_at)) * 1000)::bigint AS due_milliseconds
                  FROM scheduled_messages
                """)
            .ToListAsync(cancellationToken); // one row, an aggregate's; not composed (First logged EF's "First without OrderBy" warning at every start)
        var maxIdle = TimeSpan.FromSeconds(options.Value.MaxIdleSeconds);
        if (next.Single() is not { SecondsLeft: { } left, DueMilliseconds: var due })
        {
            return (maxIdle, null);
        }

        return (left < maxIdle.TotalSeconds ? TimeSpan.FromSeconds(left) : maxIdle, due);
    }

    private sealed record NextDueRow(double? SecondsLeft, long? DueMilliseconds);

    /// <summary>
    /// Sleeps for <paramref name="wait"/> on the LISTEN session, or until a NOTIFY announces a row due before
    /// <paramref name="nextDue"/> (any row, when none was waiting; a payload that is no time counts as one). A row due
    /// at or after it needs no round of its own: the dispatcher wakes by then anyway and reads the table again. Every
    /// stored redelivery and scheduled job sends a NOTIFY: each woke every dispatcher for a round (the claim and the
    /// next due time), to find nothing due, so a downstream outage storing redeliveries by the hundred a second cost
    /// the database as many rounds a second per worker.
    /// </summary>
    private async Task SleepAsync(NpgsqlConnection listener, TimeSpan wait, long? nextDue, CancellationToken cancellationToken)
    {
        var sooner = false;
        void Announced(object sender, NpgsqlNotificationEventArgs notification) =>
            sooner |= nextDue is not { } next
                || !long.TryParse(notification.Payload, NumberStyles.Integer, CultureInfo.InvariantCulture, out var due)
                || due < next;

        listener.Notification += Announced;
        try
        {
            var started = time.GetTimestamp();
            while (!sooner)
            {
                var left = wait - time.GetElapsedTime(started);
                if (left <= TimeSpan.Zero || !await listener.WaitAsync(ListenTimeout(left), cancellationToken))
                {
                    return;
                }
            }
        }
        finally
        {
            listener.Notification -= Announced;
        }
    }

    /// <summary>
    /// Reads the NOTIFYs the session has received and not yet handed over (those that came during a round), without
    /// acting on them: each is handed over by one wait that returns at once, and acted on, they would each start a
    /// round, to find their rows published already.
    /// </summary>
    private static async Task DrainNotificationsAsync(NpgsqlConnection listener, CancellationToken cancellationToken)
    {
        // The shortest timeout Npgsql takes for one (a zero one is none); bounded, should NOTIFYs keep coming.
        for (var i = 0; i < 10_000 && await listener.WaitAsync(TimeSpan.FromMilliseconds(1), cancellationToken); i++)
        {
        }
    }

    /// <summary>
    /// The session that LISTENs for new rows, or null when it cannot be had (a connection limit, a
    /// standby during a failover): the NOTIFY only wakes the dispatcher early, and its idle poll still
    /// finds every due row, so the dispatcher goes on without it and tries again on a later round.
    /// </summary>
    private async Task<NpgsqlConnection?> TryListenAsync(CancellationToken cancellationToken)
    {
        try
        {
            return await ListenAsync(cancellationToken);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException && !cancellationToken.IsCancellationRequested)
        {
            LogListenFailed(exception, options.Value.MaxIdleSeconds);
            return null;
        }
    }

    private async Task<NpgsqlConnection> ListenAsync(CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        // Unpooled: the LISTEN belongs to this one session for as long as it lives.
        var connectionString = new NpgsqlConnectionStringBuilder(ListenConnectionString ?? db.Database.GetConnectionString()) { Pooling = false, KeepAlive = 30 };
        var connection = new NpgsqlConnection(connectionString.ConnectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            await using var listen = new NpgsqlCommand($"LISTEN {RedeliveryStore.Channel}", connection);
            await listen.ExecuteNonQueryAsync(cancellationToken);
            return connection;
        }
        catch
        {
            // Unpooled, so not returned anywhere: a session that could not LISTEN (a standby during a
            // failover, a cancelled start) is closed here, not left open until the loop's next try.
            await connection.DisposeAsync();
            throw;
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "The redelivery dispatcher failed; retrying")]
    private partial void LogDispatchFailed(Exception exception);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The redelivery dispatcher could not LISTEN for new scheduled messages; it looks for due ones every {MaxIdleSeconds} s and tries again")]
    private partial void LogListenFailed(Exception exception, int maxIdleSeconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The broker refused {Count} scheduled message(s) (missing queue?); next try at {RetryAt:O}")]
    private partial void LogRefused(int count, DateTimeOffset retryAt);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Count} scheduled message(s) could not be published, even alone; next try at {RetryAt:O}: {Error}")]
    private partial void LogFailed(int count, DateTimeOffset retryAt, string? error);

    [LoggerMessage(Level = LogLevel.Error, Message = "Scheduled message {Id} for {Destination} can never be published ({Reason}); moved to its _error queue")]
    private partial void LogMovedToError(long id, string destination, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {JobId} ({Kind}) dead-lettered: its scheduled message {Id} can never be published")]
    private partial void LogJobDeadLettered(Guid jobId, string kind, long id);

    [LoggerMessage(Level = LogLevel.Error, Message = "Scheduled message {Id} for {Destination} can never be published ({Reason}), nor moved to its _error queue ({Error}); kept, tried again later")]
    private partial void LogNotMovedToError(long id, string destination, string reason, string? error);
}
