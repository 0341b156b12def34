using System.Diagnostics;
using System.Threading.Channels;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;
using Npgsql;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// Group commit for the inbox of one endpoint (ADR 0004). Messages that arrive while earlier ones
/// are being handled share one transaction: one round trip inserts their inbox rows and locks their
/// existing job rows (a job that succeeded or was cancelled does not run), the consumers run
/// (concurrently, staging their EF inserts), then one round trip applies every staged insert, one
/// writes each job row once (attempt counted, final status; created when another service published
/// directly) and removes the inbox rows of failed attempts, and one COMMIT makes it all durable.
/// Each message keeps the single-message protocol's guarantees: its inbox row is inserted before
/// its consumer runs, and its effects commit with it or not at all. A batch whose apply or commit fails
/// settles its messages again one per transaction, so one bad message cannot fail the others.
/// </summary>
public sealed partial class InboxBatcher : IAsyncDisposable
{
    private const string ApplySavepoint = "batch_apply";
    private const string MemberSavepoint = "batch_member";

    /// <summary>
    /// The first statements of a batch's transaction, in the claim's round trip (ADR 0010's amendment). Its
    /// prepared statements are planned once per connection, not on every execution: planning was a fifth to a
    /// quarter of PostgreSQL's time per message. Each of their reads is a probe of a unique index per key
    /// (LATERAL, ADR 0010), whatever the parameters, so one plan fits every execution; but a plan made
    /// while a table was small (analysed with a few rows) would be kept, sequential scans in it, while the
    /// table grows, until the next ANALYZE. With sequential scans off the planner takes the index even then.
    /// </summary>
    private const string GenericPlanSettings = "SET LOCAL plan_cache_mode = force_generic_plan;\nSET LOCAL enable_seqscan = off;\n";

    private static readonly ActivitySource Spans = new(TelemetryExtensions.ActivitySourceName);

    /// <summary>
    /// How long waiting messages gather, with no batch leaving the database or ending meanwhile,
    /// before a batch starts anyway: a claim waiting for a row lock (a copy of the same job in another
    /// batch whose consumer is slow, a cancel) must not hold the endpoint back for long.
    /// </summary>
    public static readonly TimeSpan DefaultGatherLimit = TimeSpan.FromMilliseconds(20);

    private readonly Channel<BatchMember> _pending = Channel.CreateUnbounded<BatchMember>(new UnboundedChannelOptions { SingleReader = true });
    private readonly SemaphoreSlim _wake = new(0, int.MaxValue);
    private readonly int _maxConcurrentBatches;
    private readonly int _eagerBatches;
    private readonly TimeSpan _gatherLimit;
    private readonly string _consumerId;
    private readonly string _kind;
    private readonly int _maxBatch;
    private readonly IDbContextFactory<ConveyorDbContext> _dbFactory;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Task _loop;
    private int _waiting;
    private int _running;
    private int _inDatabase;

    /// <summary>
    /// Whether the batch's statements take generic plans (<see cref="Messaging.ConsumerEndpointOptions.InboxGenericPlans"/>):
    /// set in the claim's round trip, for the rest of the transaction.
    /// </summary>
    public bool GenericPlans { get; init; } = true;

    public InboxBatcher(
        string consumerId,
        string kind,
        int maxBatch,
        int maxConcurrentBatches,
        int eagerBatches,
        IDbContextFactory<ConveyorDbContext> dbFactory,
        TimeProvider time,
        ILogger logger,
        TimeSpan? gatherLimit = null)
    {
        _consumerId = consumerId;
        _kind = kind;
        _maxBatch = maxBatch;
        _maxConcurrentBatches = maxConcurrentBatches;
        _eagerBatches = eagerBatches;
        _gatherLimit = gatherLimit ?? DefaultGatherLimit;
        _dbFactory = dbFactory;
        _time = time;
        _logger = logger;
        // The loop and its batches belong to no message: without this they would run for the worker's
        // lifetime inside the context of the message that happened to create the batcher, every batch's
        // database spans in that one message's trace and its log lines in its scope.
        using (ExecutionContext.SuppressFlow())
        {
            _loop = Task.Run(LoopAsync);
        }
    }

    /// <summary>Queues a message for the next batch; <see cref="BatchMember.Claimed"/> says what the inbox found.</summary>
    /// <param name="claimedJobId">The job id the message claims (<see cref="JobRef"/>), if any.</param>
    /// <param name="fingerprint">What the command says (<see cref="PayloadFingerprint"/>), kept with its inbox row.</param>
    public BatchMember Join(string messageKey, Guid? messageId, Guid? claimedJobId, byte[]? fingerprint)
    {
        var member = new BatchMember(messageKey, messageId, claimedJobId, fingerprint) { ConsumeSpan = Activity.Current?.Context ?? default };
        var waiting = Interlocked.Increment(ref _waiting);
        if (!_pending.Writer.TryWrite(member))
        {
            Interlocked.Decrement(ref _waiting);
            throw new OperationCanceledException("The inbox batcher is stopping.");
        }

        if (waiting >= _maxBatch && Volatile.Read(ref _running) < _maxConcurrentBatches)
        {
            // A full batch waits: the loop may start it even while the database is busy.
            Wake();
        }

        return member;
    }

    public async ValueTask DisposeAsync()
    {
        _pending.Writer.TryComplete();
        Wake();
        // Batches still in flight finish on their own (the bus has stopped: their consumers have ended).
        await _loop;
    }

    /// <summary>
    /// Adaptive batch size: the first few batches (<see cref="Messaging.ConsumerEndpointOptions.InboxEagerBatches"/>)
    /// start as soon as a message waits, so a lone message is not delayed. More batches start (up to
    /// the configured number in flight) while the ones in flight are all waiting for their consumers
    /// (slow consumers get batches of their own), once a full batch waits, or when messages have
    /// waited <see cref="DefaultGatherLimit"/> without any of that. While the database is busy with a
    /// batch, the messages that arrive meanwhile gather into the next one: under load, batches grow
    /// towards their maximum and their fixed costs (round trips, planning, commit) are shared by
    /// more messages.
    /// </summary>
    private bool MayStartBatch(bool gatheredLongEnough)
    {
        var running = Volatile.Read(ref _running);
        return running < _maxConcurrentBatches
            && (gatheredLongEnough || running < _eagerBatches || Volatile.Read(ref _inDatabase) == 0 || Volatile.Read(ref _waiting) >= _maxBatch);
    }

    /// <summary>
    /// Wakes the loop if it waits. Only the loop takes from the semaphore, so a count above zero
    /// already means "look again": it is not raised further, or a worker that runs for months
    /// would overflow it (and the loop would spin through stale wake-ups).
    /// </summary>
    private void Wake()
    {
        if (_wake.CurrentCount == 0)
        {
            _wake.Release();
        }
    }

    private async Task LoopAsync()
    {
        var reader = _pending.Reader;
        var gatheredLongEnough = false;
        while (await reader.WaitToReadAsync())
        {
            if (!MayStartBatch(gatheredLongEnough))
            {
                // Woken when a batch leaves the database or ends, or a full batch waits; else after the limit.
                // The limit restarts at every wake-up on purpose: it detects a database that makes no
                // progress for that long (a claim stuck on a row lock), not a message that waited that
                // long. Counted from when the oldest message joined, it fired under ordinary load, split
                // batches and cost a quarter of the consume throughput (0.66x -> 0.50x, bench/analysis.md).
                gatheredLongEnough = !await _wake.WaitAsync(_gatherLimit);
                continue;
            }

            gatheredLongEnough = false;

            var members = new List<BatchMember>(Math.Clamp(Volatile.Read(ref _waiting), 1, _maxBatch));
            while (members.Count < _maxBatch && reader.TryRead(out var member))
            {
                members.Add(member);
            }

            Interlocked.Add(ref _waiting, -members.Count);

            if (members.Count == 0)
            {
                continue;
            }

            Interlocked.Increment(ref _running);
            Interlocked.Increment(ref _inDatabase);
            _ = RunAsync(members);
        }
    }

    /// <summary>
    /// <paramref name="sql"/> with <paramref name="prefix"/> (SQL of ours, no parameters, no braces) before its text,
    /// its parameters unchanged: statements that ride in the same round trip ahead of it.
    /// </summary>
    private static FormattableString Prefixed(string prefix, FormattableString sql) =>
        System.Runtime.CompilerServices.FormattableStringFactory.Create(prefix + sql.Format, sql.GetArguments());

    private async Task RunAsync(List<BatchMember> members)
    {
        // A span of its own, linked to each member's consume span: the batch's commands are shared by all
        // of them, and a trace per message could only hold them once.
        using var span = Spans.StartActivity(
            "inbox batch",
            ActivityKind.Internal,
            parentContext: default,
            tags: [new("conveyor.consumer_id", _consumerId), new("messaging.batch.message_count", members.Count)],
            links: members.Where(m => m.ConsumeSpan != default).Select(m => new ActivityLink(m.ConsumeSpan)));
        var phase = new BatchPhase(this);
        try
        {
            await RunBatchAsync(members, phase);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // RunBatchAsync settles every member itself; this only keeps the loop alive.
            LogBatchFailed(exception, _consumerId, members.Count);
        }
        finally
        {
            phase.LeaveDatabase();
            Interlocked.Decrement(ref _running);
            Wake();
        }
    }

    /// <summary>Whether a batch is holding the database (claiming, or applying and committing) or waiting for its consumers.</summary>
    private sealed class BatchPhase(InboxBatcher batcher)
    {
        private bool _inDatabase = true;

        public void EnterDatabase()
        {
            if (!_inDatabase)
            {
                _inDatabase = true;
                Interlocked.Increment(ref batcher._inDatabase);
            }
        }

        public void LeaveDatabase()
        {
            if (_inDatabase)
            {
                _inDatabase = false;
                Interlocked.Decrement(ref batcher._inDatabase);
                batcher.Wake();
            }
        }
    }

    private async Task RunBatchAsync(List<BatchMember> members, BatchPhase phase)
    {
        ConveyorDbContext? db = null;
        try
        {
            db = await _dbFactory.CreateDbContextAsync();
            await RunBatchAsync(db, members, phase);
        }
        finally
        {
            if (db is not null)
            {
                await db.DisposeAsync();
            }

            // Whatever happened, no member may wait forever.
            foreach (var member in members)
            {
                member.FailClaim(new InvalidOperationException("The inbox batch ended without settling this message."));
            }
        }
    }

    private async Task RunBatchAsync(ConveyorDbContext db, List<BatchMember> members, BatchPhase phase)
    {
        Microsoft.EntityFrameworkCore.Storage.IDbContextTransaction transaction;
        string? transactionId;
        try
        {
            transaction = await db.Database.BeginTransactionAsync();
            db.Database.AutoSavepointsEnabled = false;
            transactionId = await ClaimAsync(db, members);
        }
        catch (Exception exception)
        {
            // Nothing ran: every message takes the failure path (an unreachable database requeues them).
            foreach (var member in members)
            {
                member.FailClaim(exception);
            }

            return;
        }

        await using var ownedTransaction = transaction;
        // Duplicates and jobs that must not run are settled already; wait for the consumers.
        phase.LeaveDatabase();
        await Task.WhenAll(members.Select(m => m.Ran));
        phase.EnterDatabase();
        var applied = false;
        try
        {
            // The savepoint rides in the apply's first command: no round trip of its own.
            await ApplyAsync(db, members, savepoint: ApplySavepoint);
            applied = true;
            if (await CommitOutcome.CommitAsync(transaction, _dbFactory, transactionId, CancellationToken.None) is { } answerLost)
            {
                // The COMMIT was applied and only its answer was lost (the connection broke after the server
                // committed): every message's outcome is durable, as in a batch whose commit was answered.
                // Taken for rolled back, each succeeded message failed (sent round again, to be acked as a
                // duplicate) and each failed attempt was counted a second time by its failure path.
                LogCommitAnswerLost(answerLost, _consumerId, members.Count);
            }
        }
        catch (Exception exception)
        {
            if (!applied && !DatabaseFailures.IsUnavailable(exception) && await SettleUnderLockAsync(db, transaction, transactionId, members))
            {
                return;
            }

            await RollBackQuietlyAsync(transaction);
            // Whose the failure is cannot be told from the exception: any message's writes may have
            // broken the batch (a staged insert, the job row of a failed attempt). Unless the database
            // is away, or only one message waited for this commit (then it is that message's own),
            // each one that waited is settled again in a transaction of its own, so that none is
            // failed (perhaps for good: a constraint violation is permanent) for another's fault.
            var waiting = members.Count(m => m.Claim != InboxClaim.Duplicate);
            var failedOnTheirOwn = members.Count(m => m.Failed);
            if (waiting > 1 && waiting > failedOnTheirOwn && !DatabaseFailures.IsUnavailable(exception))
            {
                LogFallingBack(exception, _consumerId, members.Count);
                var failedRunners = members.Where(m => m.Claim == InboxClaim.Run && m.Failed).Select(m => m.MessageKey).ToHashSet(StringComparer.Ordinal);
                foreach (var member in members)
                {
                    if (member.Claim == InboxClaim.Duplicate || member.Failed)
                    {
                        // Acked already, or failing with its consumer's own exception whatever the batch did.
                        member.Complete(committed: false, exception);
                    }
                    else if (member.Claim == InboxClaim.DuplicateInBatch && !member.DiffersFromCopyInBatch && failedRunners.Contains(member.MessageKey))
                    {
                        // A copy of a message whose run failed on its own: as in a batch that commits, that
                        // copy carries the command through its retries, and this one is acked. Settled again,
                        // it would be runnable and come back to run its consumer beside the other.
                        member.Complete(committed: true, null);
                    }
                    else
                    {
                        // In list order: the first copy of a message settles before a copy that waited for it.
                        await SettleAloneAsync(member);
                    }
                }

                return;
            }

            foreach (var member in members)
            {
                member.Complete(committed: false, exception);
            }

            return;
        }

        foreach (var member in members)
        {
            member.Complete(committed: true, null);
        }
    }

    /// <summary>
    /// The batch's apply failed, its claim's row locks still held: back to the savepoint before the
    /// apply, each succeeded message is applied alone (under a savepoint of its own), and every
    /// attempt whose effects did not apply (its consumer failed, or its own writes did) is counted
    /// and its inbox row removed, all in this transaction. A cancel waiting for a job row thus finds
    /// the attempt, never a job that looks unstarted while its attempt's effect (an HTTP call) is out.
    /// False, with no member settled, when that failed too: the caller rolls back and falls back. A COMMIT that
    /// fails is asked after (<see cref="CommitOutcome"/>): applied, its answer lost with the connection,
    /// the members are settled as committed here.
    /// </summary>
    private async Task<bool> SettleUnderLockAsync(
        ConveyorDbContext db, Microsoft.EntityFrameworkCore.Storage.IDbContextTransaction transaction, string? transactionId, List<BatchMember> members)
    {
        var applied = new List<BatchMember>();
        var failedToApply = new List<(BatchMember Member, Exception Failure)>();
        try
        {
            await transaction.RollbackToSavepointAsync(ApplySavepoint);
            foreach (var member in members.Where(m => m.Succeeded))
            {
                try
                {
                    await ApplyAsync(db, [member], savepoint: MemberSavepoint);
                    await db.Database.ExecuteSqlRawAsync($"RELEASE SAVEPOINT {MemberSavepoint}");
                    applied.Add(member);
                }
                catch (Exception exception) when (!DatabaseFailures.IsUnavailable(exception))
                {
                    await transaction.RollbackToSavepointAsync(MemberSavepoint);
                    failedToApply.Add((member, exception));
                }
            }

            var unapplied = members.Where(m => m.Failed).Concat(failedToApply.Select(f => f.Member)).ToList();
            await WriteJobRowsAsync(db, [], unapplied, savepoint: null);
            if (await CommitOutcome.CommitAsync(transaction, _dbFactory, transactionId, CancellationToken.None) is { } answerLost)
            {
                // Settled after all: taken for rolled back, the batch fell back to settling its messages again, and
                // every attempt counted here was left for its failure path to count a second time.
                LogCommitAnswerLost(answerLost, _consumerId, members.Count);
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            LogSettleUnderLockFailed(exception, _consumerId, members.Count);
            return false;
        }

        foreach (var member in members)
        {
            var own = failedToApply.FirstOrDefault(f => f.Member == member).Failure;
            if (own is not null)
            {
                member.CompleteWithAttemptRecorded(own);
            }
            else
            {
                // Applied; or its consumer failed and its attempt is counted, as in a batch that commits.
                member.Complete(committed: true, null);
            }
        }

        return true;
    }

    /// <summary>
    /// A message of a batch that failed, in a transaction of its own: its inbox row claimed again and,
    /// if its consumer succeeded, its effects applied (the consumer does not run again); unless its key
    /// now names another command (<see cref="BatchMember.ConflictingFingerprint"/>), which it is not. One whose consumer
    /// ran and whose job a cancel took since the batch rolled back is acked without its effects, and the job says that
    /// the attempt ran (<see cref="JobTracker.RecordAttemptBeforeCancelAsync"/>); one whose key another copy applied
    /// meanwhile is acked as a duplicate (<see cref="BatchSettlement.AlreadySettled"/>).
    /// </summary>
    private async Task SettleAloneAsync(BatchMember member)
    {
        try
        {
            await using var db = await _dbFactory.CreateDbContextAsync();
            await using var transaction = await db.Database.BeginTransactionAsync();
            db.Database.AutoSavepointsEnabled = false;
            var claim = await ClaimRowsAsync(db, [member]);
            var claimed = claim.TryGetValue(member.MessageKey, out var row);
            // As in the batch's claim (ADR 0011): its key may have been applied from another command since,
            // or its job row created for one; then it is the conflict, and nothing of it is kept.
            member.CompareWithApplied(claimed ? row!.JobFingerprint
                : await InboxConflicts.StoredFingerprintAsync(db, _consumerId, member.MessageKey, member.Fingerprint, CancellationToken.None));
            if (member.ConflictingFingerprint is not null)
            {
                await transaction.RollbackAsync();
                member.Complete(committed: false, null);
                return;
            }

            var runnable = claimed && row!.Runnable;
            if (runnable && member.Succeeded)
            {
                member.ResolveJob(row!);
                await ApplyAsync(db, [member]);
            }
            else if (runnable)
            {
                // It did not run in the batch (the copy it waited for failed, or its job was finished and
                // is not any more), and now it would: recorded as handled it would never run. Its
                // failure path brings it back (no cause: a retry).
                await transaction.RollbackAsync();
                member.Complete(committed: false, null);
                return;
            }

            // Not claimed again: another copy got there meanwhile, or the job was cancelled; its effects are dropped.
            // A cancel may have come in since the batch rolled back (its row locks went with it, and the job read queued
            // with no attempt): the consumer ran, its effect may be out, so the job says so, in this transaction.
            var cancelledJob = member.Succeeded
                ? await JobTracker.RecordAttemptBeforeCancelAsync(db, _kind, member.MessageKey, member.MessageId, _time.GetUtcNow(), CancellationToken.None)
                : null;
            await transaction.CommitAsync();
            if (cancelledJob is { } jobId)
            {
                JobTracker.LogAttemptBeforeCancel(_logger, _kind, member.MessageKey, jobId, member.MessageId);
                member.CompleteWithoutEffects(BatchSettlement.CancelledAfterRun);
                return;
            }

            if (member.Succeeded && !runnable)
            {
                // Another copy of the message applied its key meanwhile (or its job succeeded otherwise) and counted the
                // job's success: this one, its effects dropped, is a duplicate.
                member.CompleteWithoutEffects(BatchSettlement.AlreadySettled);
                return;
            }

            member.Complete(committed: true, null);
        }
        catch (Exception exception)
        {
            member.Complete(committed: false, exception);
        }
    }

    /// <summary>
    /// One round trip: the inbox rows (a conflict means a duplicate) and the job claims. The batch's transaction id
    /// when it inserted any inbox row (<see cref="CommitOutcome"/>), else null.
    /// </summary>
    private async Task<string?> ClaimAsync(ConveyorDbContext db, List<BatchMember> members)
    {
        var claimed = await ClaimRowsAsync(db, members);
        var transactionId = claimed.Values.Select(r => r.TransactionId).FirstOrDefault(id => id is not null);
        // A key new to the inbox whose job row was created for another command (the Api accepted that one,
        // ADR 0011): this message is the conflict, and its inbox row goes again before anything runs. Not
        // against a dead-lettered job: its command failed for good, and a corrected one may take its place.
        var againstJob = members.GroupBy(m => m.MessageKey, StringComparer.Ordinal)
            .Select(g => g.First())
            .Where(m => claimed.TryGetValue(m.MessageKey, out var row) && PayloadFingerprint.Conflicts(row.JobFingerprint, m.Fingerprint))
            .ToList();
        if (againstJob.Count > 0)
        {
            await InboxConflicts.RemoveRowsAsync(db, _consumerId, [.. againstJob.Select(m => m.MessageKey)], CancellationToken.None);
            foreach (var member in againstJob)
            {
                member.CompareWithApplied(claimed[member.MessageKey].JobFingerprint);
                claimed.Remove(member.MessageKey);
            }
        }

        // The first member of each inserted key: the conflicts with their jobs now, the others as the loop meets them.
        var inserters = againstJob.ToDictionary(m => m.MessageKey, StringComparer.Ordinal);
        // Keys taken already: what their rows' commands said, unless no member here has a fingerprint to compare.
        var taken = members.Where(m => m.Fingerprint is not null && !claimed.ContainsKey(m.MessageKey) && !inserters.ContainsKey(m.MessageKey))
            .Select(m => m.MessageKey).ToList();
        var applied = taken.Count == 0 ? null : await InboxConflicts.StoredFingerprintsAsync(db, _consumerId, taken, CancellationToken.None);
        var claims = new List<(BatchMember Member, InboxClaim Claim)>(members.Count);
        foreach (var member in members)
        {
            if (inserters.TryGetValue(member.MessageKey, out var first) && first == member)
            {
                // In conflict with its job (ConflictingFingerprint set above): settled like a duplicate, never run.
                claims.Add((member, InboxClaim.Duplicate));
            }
            else if (first is not null)
            {
                // Two copies in one batch: the first runs (or is the conflict with its job, which keeps one
                // in _error), this one waits for the batch; a copy with another command is tried again alone.
                member.CompareWithCopyInBatch(first.Fingerprint);
                claims.Add((member, InboxClaim.DuplicateInBatch));
            }
            else if (!claimed.TryGetValue(member.MessageKey, out var row))
            {
                member.CompareWithApplied(applied?.GetValueOrDefault(member.MessageKey));
                claims.Add((member, InboxClaim.Duplicate));
            }
            else
            {
                inserters.Add(member.MessageKey, member);
                member.ResolveJob(row);
                claims.Add((member, row.Runnable ? InboxClaim.Run : InboxClaim.NotRunnable));
            }
        }

        // Settled only once all are known: a member's filter goes on as soon as its claim settles.
        foreach (var (member, claim) in claims)
        {
            member.SetClaim(claim);
        }

        return transactionId;
    }

    private async Task<Dictionary<string, BatchClaimRow>> ClaimRowsAsync(ConveyorDbContext db, IReadOnlyList<BatchMember> members)
    {
        var now = _time.GetUtcNow();
        var keys = members.Select(m => m.MessageKey).ToArray();
        var messageIds = members.Select(m => m.MessageId).ToArray();
        var jobIds = members.Select(m => m.JobId).ToArray();
        var fingerprints = members.Select(m => m.Fingerprint).ToArray();
        // Rows are inserted and locked in key order, so two batches holding copies of the same
        // messages queue behind each other instead of deadlocking. The job rows are only locked
        // here (a cancel waits for the batch); they are written once, with the outcome, by ApplyAsync.
        // A job's id is its row's; a job without a row yet takes the id its message claims unless
        // another row holds it (JobRef), else a new one.
        // Each inserted key looks its job up on its own (LATERAL, locking inside, so the planner cannot
        // turn it into a join): one probe of the (kind, business_key) index per key, whatever the
        // table's statistics say. Planned as a join or an array lookup, statistics that lag behind the
        // table (a new deployment, a kind that was rare when the table was last analysed and is now
        // busy, a burst) made every full batch read every job of its kind: 18 ms (array) and 107 ms
        // (join) against 2 ms for 64 keys among 10,000 such jobs. The keys go in sorted, so the row
        // locks are taken in key order.
        // Two statements in one round trip: the inserts, then the lookups. Under READ COMMITTED a statement
        // sees the rows committed before it started, and an insert may wait for another batch's uncommitted
        // row of the same key: that batch's failed attempt then commits, removing its row and creating the
        // job's (a command published directly). Looked up in the inserting statement, such a job was not
        // there: the claim took no lock on it, counted attempt 1 under an id of its own, and ran a command
        // of other content under the first one's job (ADR 0011). The second statement sees it. The keys
        // this transaction inserted are those whose rows it wrote (xmin), found one primary-key probe each
        // (LIMIT 1 keeps the probe from being turned into a join). Whether a claimed job id is free is a scalar
        // subquery, a primary-key probe per key whatever the plan: as NOT EXISTS, a plan made while jobs was small was
        // an anti join reading the whole primary key for each key, kept as jobs grew (InboxClaimPlanTests).
        FormattableString claimSql = $"""
            WITH input AS (
                SELECT t.message_key, t.message_id, t.payload_hash, t.ord
                  FROM unnest({keys}::text[], {messageIds}::uuid[], {fingerprints}::bytea[])
                       WITH ORDINALITY AS t(message_key, message_id, payload_hash, ord))
            INSERT INTO inbox (consumer_id, message_key, message_id, received_at, payload_hash)
            SELECT {_consumerId}, i.message_key, i.message_id, {now}, i.payload_hash FROM input i ORDER BY i.message_key, i.ord
            ON CONFLICT DO NOTHING;
            WITH input AS (
                SELECT t.message_key, t.job_id, t.ord
                  FROM unnest({keys}::text[], {jobIds}::uuid[]) WITH ORDINALITY AS t(message_key, job_id, ord)),
            inbox_rows AS (
                SELECT k.message_key
                  FROM (SELECT DISTINCT i.message_key FROM input i ORDER BY i.message_key) k
                 CROSS JOIN LATERAL (
                       SELECT 1 FROM inbox b
                        WHERE b.consumer_id = {_consumerId} AND b.message_key = k.message_key AND b.xmin = pg_current_xact_id_if_assigned()::xid LIMIT 1) b),
            job_rows AS (
                SELECT j.business_key, j.status, j.id, j.attempts, j.payload_hash, j.original_payload_hash
                  FROM (SELECT r.message_key FROM inbox_rows r ORDER BY r.message_key) k
                 CROSS JOIN LATERAL (
                       SELECT o.business_key, o.status, o.id, o.attempts, o.payload_hash, o.original_payload_hash
                         FROM jobs o
                        WHERE o.kind = {_kind} AND o.business_key = k.message_key
                          FOR NO KEY UPDATE) j)
            SELECT r.message_key AS "Key",
                   (j.status IS NULL OR j.status NOT IN ({JobStatus.Succeeded}, {JobStatus.Cancelled})) AS "Runnable",
                   COALESCE(j.id, (SELECT i.job_id FROM input i
                                    WHERE i.message_key = r.message_key AND (SELECT o.id FROM jobs o WHERE o.id = i.job_id) IS NULL
                                    ORDER BY i.ord LIMIT 1)) AS job_id,
                   j.id IS NOT NULL AS job_row_found,
                   COALESCE(j.attempts, 0) + 1 AS attempt,
                   CASE WHEN j.status <> {JobStatus.DeadLettered} THEN j.payload_hash END AS job_fingerprint,
                   COALESCE(j.original_payload_hash, j.payload_hash) AS first_fingerprint,
                   pg_current_xact_id_if_assigned()::text AS transaction_id
              FROM inbox_rows r LEFT JOIN job_rows j ON j.business_key = r.message_key
            """;
        if (GenericPlans)
        {
            claimSql = Prefixed(GenericPlanSettings, claimSql);
        }

        var rows = await db.Database.SqlQuery<BatchClaimRow>(claimSql).ToListAsync(); // not composed: several statements
        return rows.ToDictionary(r => r.Key, StringComparer.Ordinal);
    }

    /// <summary>
    /// The staged inserts of the attempts that succeeded; then one write per job that ran: counted
    /// attempt and final status (succeeded, or running until the failure path records its error),
    /// creating the row when another service published directly; and the inbox rows of the
    /// attempts that failed removed.
    /// </summary>
    /// <param name="savepoint">If given, set in the same command before the first write.</param>
    private async Task ApplyAsync(ConveyorDbContext db, IReadOnlyList<BatchMember> members, string? savepoint = null)
    {
        var succeeded = members.Where(m => m.Succeeded).ToList();
        var staged = succeeded.SelectMany(m => m.Staged).ToList();
        // The staged inserts ride in the job rows' command: one round trip for the batch's writes.
        var others = await WriteJobRowsAsync(db, succeeded, members.Where(m => m.Failed).ToList(), savepoint, staged);
        if (others.Count > 0)
        {
            await StagedRows.SaveAsync(db, others, CancellationToken.None);
        }
    }

    /// <summary>
    /// One write per job that ran: <paramref name="succeeded"/> become succeeded, <paramref name="unapplied"/>
    /// (attempts whose effects are not committed) stay running until the failure path records the error
    /// and lose their inbox rows, so the message can be claimed again.
    /// </summary>
    /// <param name="staged">
    /// Rows the <paramref name="succeeded"/> consumers staged, inserted in the same command after the job rows;
    /// those <see cref="StagedRows"/> cannot write that way are returned, for SaveChanges.
    /// </param>
    private async Task<List<object>> WriteJobRowsAsync(
        ConveyorDbContext db, IReadOnlyList<BatchMember> succeeded, IReadOnlyList<BatchMember> unapplied, string? savepoint,
        IReadOnlyCollection<object>? staged = null)
    {
        var ran = succeeded.Select(m => (Member: m, Ok: true)).Concat(unapplied.Select(m => (Member: m, Ok: false)))
            .OrderBy(r => r.Member.MessageKey, StringComparer.Ordinal).ToList();
        if (ran.Count == 0)
        {
            return [];
        }

        var claiming = ran.Where(r => r.Member.ClaimsUnusedJobId).Select(r => r.Member).ToList();
        if (claiming.Count > 0)
        {
            await SettleClaimedJobIdsAsync(db, claiming, savepoint);
            savepoint = null;
        }

        var now = _time.GetUtcNow();
        var jobIds = ran.Select(r => r.Member.JobId ?? Guid.CreateVersion7()).ToArray();
        var keys = ran.Select(r => r.Member.MessageKey).ToArray();
        var fingerprints = ran.Select(r => r.Member.Fingerprint).ToArray();
        var ok = ran.Select(r => r.Ok).ToArray();
        var failedKeys = ran.Where(r => !r.Ok).Select(r => r.Member.MessageKey).ToArray();
        // A row created here (a command another service published directly) is stamped by the database's clock when
        // this statement starts, as every row the worker creates (JobTracker): it commits with the batch
        // right after, and a worker whose clock is behind put it behind the settle horizon of the oldest-first job
        // listing (ADR 0013). An existing row's update takes this worker's clock, but never back past the row's last
        // write (GREATEST, as every worker write of a job's times: ADR 0013's amendment).
        // The failed attempts' inbox rows are found one index probe per key (LATERAL, LIMIT 1 keeps it
        // from being turned into a join), then deleted by their row ids, which this transaction's own
        // inserts keep stable. Written as "consumer_id = … AND message_key = ANY(…)", statistics that
        // lag behind the inbox made it read every row of the consumer, and it ran with every batch,
        // failures or not (7 ms against 0.1 ms for 20,000 rows).
        FormattableString sql = $"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at, finished_at, payload_hash)
            SELECT t.id, {_kind}, t.business_key, CASE WHEN t.ok THEN {JobStatus.Succeeded} ELSE {JobStatus.Running} END,
                   1, statement_timestamp(), statement_timestamp(), CASE WHEN t.ok THEN statement_timestamp() END, t.payload_hash
              FROM unnest({jobIds}::uuid[], {keys}::text[], {ok}::boolean[], {fingerprints}::bytea[])
                   AS t(id, business_key, ok, payload_hash)
            ON CONFLICT (kind, business_key) DO UPDATE
               SET status = excluded.status, attempts = jobs.attempts + 1, next_attempt_at = NULL,
                   updated_at = GREATEST(jobs.updated_at + interval '1 microsecond', {now}),
                   last_error = CASE WHEN excluded.status = {JobStatus.Succeeded} THEN NULL ELSE jobs.last_error END,
                   progress = CASE WHEN excluded.status = {JobStatus.Succeeded} AND jobs.progress IS NOT NULL THEN 100 ELSE jobs.progress END,
                   finished_at = CASE WHEN excluded.status = {JobStatus.Succeeded} THEN GREATEST(jobs.updated_at + interval '1 microsecond', {now}) END,
                   request_body = NULL,
                   -- A corrected command taking a dead-lettered job's place: the job is its job now (ADR 0011).
                   payload_hash = CASE WHEN jobs.status = {JobStatus.DeadLettered} THEN COALESCE(excluded.payload_hash, jobs.payload_hash) ELSE jobs.payload_hash END,
                   original_payload_hash = CASE WHEN jobs.status = {JobStatus.DeadLettered} AND excluded.payload_hash IS DISTINCT FROM jobs.payload_hash
                                                     AND excluded.payload_hash IS NOT NULL THEN COALESCE(jobs.original_payload_hash, jobs.payload_hash)
                                                ELSE jobs.original_payload_hash END
             WHERE jobs.status NOT IN ({JobStatus.Succeeded}, {JobStatus.Cancelled});
            """;
        if (failedKeys.Length > 0)
        {
            // Only with failures: run with every batch, the statement planned and found nothing (0.2 ms of
            // planning a batch, about 4 % of PostgreSQL's time per message in the consume benchmark).
            var arguments = sql.GetArguments();
            sql = System.Runtime.CompilerServices.FormattableStringFactory.Create(
                sql.Format + "\n" + $$"""
                DELETE FROM inbox
                 WHERE ctid = ANY (ARRAY(
                       SELECT i.ctid FROM unnest({{{arguments.Length}}}::text[]) AS k(message_key)
                        CROSS JOIN LATERAL (
                              SELECT ctid FROM inbox WHERE consumer_id = {{{arguments.Length + 1}}} AND message_key = k.message_key LIMIT 1) i));
                """,
                [.. arguments, failedKeys, _consumerId]);
        }

        if (savepoint is not null)
        {
            sql = Prefixed($"SAVEPOINT {savepoint};\n", sql);
        }

        var others = new List<object>();
        if (staged is { Count: > 0 })
        {
            sql = StagedRows.Append(db, sql, staged, others);
        }

        await db.Database.ExecuteSqlAsync(sql);
        return others;
    }

    /// <summary>
    /// The rows about to be created under the ids their messages claimed (JobRef) keep them only while no
    /// other row holds them: the claim is only a claim. Another batch may be writing a row under the same
    /// id at this very moment, which no snapshot shows; inserted anyway, this row would wait for that batch
    /// and fail with a unique violation when it commits (for good, its consumer's effect out). So each id's
    /// advisory lock is taken first (to the end of the transaction; another batch's holds it to its commit),
    /// and only then, in a statement of its own that sees what that batch committed, are the taken ids
    /// looked up: a member whose id is taken gets a fresh one. One round trip, only for such rows; with the
    /// <paramref name="savepoint"/>, if given, set before the locks.
    /// </summary>
    private static async Task SettleClaimedJobIdsAsync(ConveyorDbContext db, IReadOnlyList<BatchMember> claiming, string? savepoint)
    {
        Guid[] ids = [.. claiming.Select(m => m.JobId!.Value)];
        var connection = (NpgsqlConnection)db.Database.GetDbConnection();
        await using var batch = new NpgsqlBatch(connection) { Transaction = (NpgsqlTransaction?)db.Database.CurrentTransaction?.GetDbTransaction() };
        if (savepoint is not null)
        {
            batch.BatchCommands.Add(new NpgsqlBatchCommand($"SAVEPOINT {savepoint}"));
        }

        batch.BatchCommands.Add(new NpgsqlBatchCommand(ClaimedJobIdLocks.EachSql) { Parameters = { new NpgsqlParameter<Guid[]> { TypedValue = ids } } });
        // A scalar subquery, one primary-key probe per id: "id = ANY(…)" or an EXISTS may be planned as a
        // scan or a hash of every job when the statistics lag behind the table (InboxClaimPlanTests).
        batch.BatchCommands.Add(new NpgsqlBatchCommand("""
            SELECT i.id FROM unnest($1::uuid[]) AS i(id) WHERE (SELECT o.id FROM jobs o WHERE o.id = i.id) IS NOT NULL
            """) { Parameters = { new NpgsqlParameter<Guid[]> { TypedValue = ids } } });
        var taken = new HashSet<Guid>();
        await using (var reader = await batch.ExecuteReaderAsync())
        {
            // Past the locks' rows (one per id, void) to the lookup's.
            await reader.NextResultAsync();
            while (await reader.ReadAsync())
            {
                taken.Add(reader.GetGuid(0));
            }
        }

        foreach (var member in claiming.Where(m => taken.Contains(m.JobId!.Value)))
        {
            member.TakeFreshJobId();
        }
    }

    private static async Task RollBackQuietlyAsync(Microsoft.EntityFrameworkCore.Storage.IDbContextTransaction transaction)
    {
        try
        {
            await transaction.RollbackAsync();
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The connection may be gone; PostgreSQL rolls back an abandoned transaction itself.
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Inbox batch of {ConsumerId} ({Count} messages) got no answer to its commit, which the database applied; its messages are settled as committed")]
    private partial void LogCommitAnswerLost(Exception exception, string consumerId, int count);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Inbox batch of {ConsumerId} ({Count} messages) could not settle its messages under its row locks; rolling back")]
    private partial void LogSettleUnderLockFailed(Exception exception, string consumerId, int count);

    [LoggerMessage(Level = LogLevel.Error, Message = "Inbox batch of {ConsumerId} ({Count} messages) failed unexpectedly")]
    private partial void LogBatchFailed(Exception exception, string consumerId, int count);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Inbox batch of {ConsumerId} ({Count} messages) could not commit; committing its messages one by one")]
    private partial void LogFallingBack(Exception exception, string consumerId, int count);
}

/// <summary>One message in an inbox batch: what the inbox found, what its consumer did, how the batch ended.</summary>
public sealed class BatchMember(string messageKey, Guid? messageId, Guid? claimedJobId, byte[]? fingerprint)
{
    private readonly TaskCompletionSource<InboxClaim> _claimed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _ran = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<bool> _completed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public string MessageKey { get; } = messageKey;

    public Guid? MessageId { get; } = messageId;

    /// <summary>The span the message was joined from (its consume), which the batch's span links to; default when untraced.</summary>
    public ActivityContext ConsumeSpan { get; init; }

    /// <summary>What its command says (<see cref="PayloadFingerprint"/>); null when it has no fingerprint.</summary>
    public byte[]? Fingerprint { get; } = fingerprint;

    /// <summary>
    /// For a <see cref="InboxClaim.Duplicate"/>: the fingerprint of the command its key was applied from,
    /// or its job row created for, when that one says something else (ADR 0011); then the message is a
    /// conflict, not a duplicate. Also set, with <see cref="Completed"/> false, on a message of a failed
    /// batch that found such a command when it was settled again alone.
    /// </summary>
    public byte[]? ConflictingFingerprint { get; private set; }

    /// <summary>
    /// For a <see cref="InboxClaim.DuplicateInBatch"/>: the copy that runs says something else, so this
    /// one is no copy of it; it is tried again after that one settled, and then applied or found in conflict.
    /// </summary>
    public bool DiffersFromCopyInBatch { get; private set; }

    /// <summary>
    /// The job's id: the one its message claims until <see cref="Claimed"/> settles; then, for a
    /// message that may run, its row's (or the one its row will be created with).
    /// </summary>
    public Guid? JobId { get; private set; } = claimedJobId;

    /// <summary>What the inbox found, once <see cref="Claimed"/> has settled.</summary>
    internal InboxClaim? Claim { get; private set; }

    /// <summary>
    /// For a message that may run, the attempt its batch counts when it commits (<see cref="JobRef.Attempt"/>):
    /// the job row stays locked from the claim to the commit, so no other attempt is counted in between.
    /// </summary>
    public int? Attempt { get; private set; }

    /// <summary>For a message that may run, its job's first command as its claim read it (<see cref="ClaimedFingerprints"/>).</summary>
    public byte[]? FirstFingerprint { get; private set; }

    /// <summary>Settled after the batch's claim; faulted if the claim failed.</summary>
    public Task<InboxClaim> Claimed => _claimed.Task;

    /// <summary>True once the batch committed (this message's effects with it), false if it rolled back.</summary>
    public Task<bool> Completed => _completed.Task;

    /// <summary>Why the batch rolled back, when it did; or why this message's own writes did not apply.</summary>
    public Exception? BatchFailure { get; private set; }

    /// <summary>
    /// Its effects did not commit, but its attempt did (counted, under the job row's lock): the
    /// failure path records the error without counting it again.
    /// </summary>
    public bool AttemptRecorded { get; private set; }

    /// <summary>
    /// For a message whose consumer succeeded, once <see cref="Completed"/> is true: whether its effects were applied, or
    /// dropped when it was settled alone after its batch failed (<see cref="BatchSettlement"/>).
    /// </summary>
    public BatchSettlement Settlement { get; private set; }

    internal Task Ran => _ran.Task;

    internal bool Succeeded { get; private set; }

    internal bool Failed { get; private set; }

    internal IReadOnlyList<object> Staged { get; private set; } = [];

    /// <summary>The consumer succeeded; <paramref name="staged"/> are the inserts it made.</summary>
    public void RanSuccessfully(IReadOnlyList<object> staged)
    {
        Staged = staged;
        Succeeded = true;
        _ran.TrySetResult();
    }

    /// <summary>The consumer failed: its inbox row goes, and the message takes the failure path.</summary>
    public void RanAndFailed()
    {
        Failed = true;
        _ran.TrySetResult();
    }

    internal void CompareWithApplied(byte[]? applied)
    {
        if (PayloadFingerprint.Conflicts(applied, Fingerprint))
        {
            ConflictingFingerprint = applied;
        }
    }

    internal void CompareWithCopyInBatch(byte[]? first) => DiffersFromCopyInBatch = PayloadFingerprint.Conflicts(first, Fingerprint);

    /// <summary>
    /// Its job has no row yet, and the row its batch creates takes the id its message claimed, which no
    /// row held at the claim: the apply checks it again under a lock (another batch may be writing it).
    /// </summary>
    internal bool ClaimsUnusedJobId { get; private set; }

    /// <summary>The id it claimed is taken by another row: its job's row is created under an id of its own.</summary>
    internal void TakeFreshJobId()
    {
        JobId = Guid.CreateVersion7();
        ClaimsUnusedJobId = false;
    }

    internal void ResolveJob(BatchClaimRow row)
    {
        ClaimsUnusedJobId = row.JobId is not null && !row.JobRowFound;
        JobId = row.JobId ?? Guid.CreateVersion7();
        Attempt = row.Attempt;
        FirstFingerprint = row.FirstFingerprint;
    }

    internal void SetClaim(InboxClaim claim)
    {
        Claim = claim;
        if (claim != InboxClaim.Run)
        {
            // Nothing to wait for: its consumer does not run.
            _ran.TrySetResult();
        }

        _claimed.TrySetResult(claim);
    }

    internal void FailClaim(Exception exception)
    {
        _ran.TrySetResult();
        _completed.TrySetResult(false);
        _claimed.TrySetException(exception);
    }

    internal void CompleteWithAttemptRecorded(Exception failure)
    {
        AttemptRecorded = true;
        Complete(committed: false, failure);
    }

    /// <summary>Acked, its effects dropped: <paramref name="settlement"/> says why.</summary>
    internal void CompleteWithoutEffects(BatchSettlement settlement)
    {
        Settlement = settlement;
        Complete(committed: true, null);
    }

    internal void Complete(bool committed, Exception? failure)
    {
        BatchFailure = failure;
        _completed.TrySetResult(committed);
    }
}

/// <summary>What became of the effects of a message whose consumer succeeded, once it was acked (<see cref="BatchMember.Settlement"/>).</summary>
public enum BatchSettlement
{
    /// <summary>Committed with its batch, or alone after its batch failed: the job succeeded.</summary>
    Applied,

    /// <summary>
    /// Settled alone after its batch failed, it found its key applied by another copy of its message since the batch
    /// rolled back (or its job succeeded otherwise): acked as a duplicate, its effects dropped. The copy that applied
    /// the key counted the job's success.
    /// </summary>
    AlreadySettled,

    /// <summary>
    /// Settled alone after its batch failed, it found its job cancelled since the batch rolled back: acked without its
    /// effects, its attempt counted on the cancelled job and flagged there (<see cref="Jobs.JobTracker.RecordAttemptBeforeCancelAsync"/>).
    /// Its job did not succeed.
    /// </summary>
    CancelledAfterRun,
}

/// <summary>One row of the batch claim: a key whose inbox row was inserted, whether its job may run, and its id.</summary>
public sealed class BatchClaimRow
{
    public string Key { get; init; } = "";

    public bool Runnable { get; init; }

    /// <summary>The job row's id; else the id its message claims when no other row holds it; else null.</summary>
    public Guid? JobId { get; init; }

    /// <summary>Whether the job had a row (locked by the claim); else the batch creates it.</summary>
    public bool JobRowFound { get; init; }

    /// <summary>The attempt the batch counts for it: one more than the locked row's (1 for a row it creates).</summary>
    public int Attempt { get; init; }

    /// <summary>The fingerprint of the command the job row was created for (ADR 0011), when it has one.</summary>
    public byte[]? JobFingerprint { get; init; }

    /// <summary>
    /// The job's first command as the locked row says (<see cref="ClaimedFingerprints"/>), dead-lettered
    /// or not: its original fingerprint after a takeover, else its own; null without a row.
    /// </summary>
    public byte[]? FirstFingerprint { get; init; }

    /// <summary>The id of the batch's transaction (<c>xid8</c> as text), which inserted this row.</summary>
    public string? TransactionId { get; init; }
}
