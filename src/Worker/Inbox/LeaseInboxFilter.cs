using System.Globalization;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Inbox;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Redelivery;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// The inbox for long jobs (minutes), which must not hold a transaction open: claim a lease row in
/// a short transaction, renew it by heartbeat while the consumer runs, then write the consumer's
/// results, the inbox <c>done</c> mark and the job's success in one final transaction. A copy
/// that finds a live lease is stored for redelivery when the lease would expire, and acked: at most
/// <see cref="ConsumerEndpointOptions.MaxLeaseDeferrals"/> times, counted in a sealed header
/// (<see cref="RedeliverySeal.ReadLeaseDeferrals"/>), then it goes to <c>_error</c> (<see cref="LeaseDeferralsSpentException"/>).
/// Leases are timed by the database's clock (<c>clock_timestamp()</c>), never by a worker's: a worker
/// whose clock runs ahead would otherwise take over leases that are still live, and one whose clock
/// lags would keep running on a lease that has lapsed. Locally, a lease only ever counts down from
/// just before the statement that set it, so a worker gives up its run no later than the database
/// would let another take it.
/// The delivery itself stays unacked for the whole run, so a run still going when the delivery nears
/// RabbitMQ's consumer_timeout is stopped (<see cref="DeliveryDeadline"/>) and fails with a
/// <see cref="DeliveryDeadlineException"/>: a delayed redelivery while the budget lasts, then
/// <c>_error</c>, instead of the broker closing the channel and the job starting over forever.
/// A COMMIT whose answer was lost (the connection broke after the server applied it), the lease's claim's or the
/// final one, is asked after on a connection of its own (<see cref="CommitOutcome"/>) and, committed, taken for the
/// commit it was: the lease is this run's, the run's success settled (ADR 0001). A claim whose outcome cannot be told
/// (the database out of reach for the question too) is released; failing that, the delivery's next in-memory attempt
/// takes the lease back, its owner being the delivery's, not the attempt's (<see cref="DeliveryOwner"/>).
/// </summary>
public sealed partial class LeaseInboxFilter<T>(
    ConveyorDbContext db,
    IDbContextFactory<ConveyorDbContext> dbFactory,
    JobTracker tracker,
    JobMetrics metrics,
    RedeliveryStore redeliveries,
    RedeliverySeal seal,
    IOptionsMonitor<ConsumerEndpointOptions> endpointOptions,
    IOptions<RabbitMqOptions> rabbitMq,
    TimeProvider time,
    IServiceProvider services,
    ILogger<LeaseInboxFilter<T>> logger) : IFilter<ConsumeContext<T>>
    where T : class
{
    public async Task Send(ConsumeContext<T> context, IPipe<ConsumeContext<T>> next)
    {
        var cancellationToken = context.CancellationToken;
        var descriptor = services.GetRequiredService<JobDescriptor<T>>();
        var consumerId = InboxKeys.ConsumerIdOf(context);
        var key = descriptor.BusinessKey(context.Message);
        var job = new JobRef(descriptor.Kind, key, InboxKeys.ClaimedJobIdOf(context));
        var lease = TimeSpan.FromSeconds(endpointOptions.Get(descriptor.ConsumerName).LeaseSeconds);
        var owner = DeliveryOwner.Of(context);
        // A delivery that waited (prefetched, or through earlier attempts) until no time is left gets no run.
        ThrowIfOutOfTime(context, DeliveryTimeLeft(context), consumerId, key);

        var fingerprint = PayloadFingerprint.Of(context.Message);
        if (await TryClaimAsync(consumerId, key, context.MessageId, fingerprint, owner, lease, cancellationToken) is not { } leasedUntil)
        {
            await DeferOrSkipAsync(context, descriptor.ConsumerName, consumerId, key, fingerprint, cancellationToken);
            return;
        }

        bool leaseLost;
        var attempt = new AttemptStarted();
        try
        {
            leaseLost = !await RunAsync(context, next, job, fingerprint, consumerId, key, owner, lease, leasedUntil, attempt);
        }
        catch (Exception exception)
        {
            // Whatever failed after the claim, the lease goes with it: left behind, it would make every
            // retry of this message wait for its expiry as if another worker were running it.
            await ReleaseQuietlyAsync(consumerId, key, owner);
            if (exception is not IdempotencyConflictException && (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested))
            {
                // Only an attempt that started failed: a start that failed itself (the database away before the job
                // was claimed) ran nothing, as a claim that fails in the other inboxes, and counts no failed attempt.
                // What becomes of the delivery is counted where it is decided (a retry scheduled, a dead letter).
                if (attempt.Started)
                {
                    metrics.AttemptFailed(job.Kind);
                }

                // Only while this run's attempt is the latest: a run that took the lease over counted a newer one.
                await RecordFailureQuietlyAsync(job with { Attempt = ClaimedAttempt.Of(context) }, exception);
            }

            throw;
        }

        if (leaseLost)
        {
            // The run stopped (or found at its commit that the lease was another's) with nothing committed
            // or recorded. Our copy is neither acked as handled nor failed (that would count an attempt
            // against a job that did not fail, and send the copy through retries towards _error): it is
            // parked like any copy that meets another's lease. A worker that took the lease over holds a
            // copy of its own, so ours comes back to be skipped once that run is done, or to take over if
            // that run is gone (it failed, or its command conflicted with the job). A lease that only
            // ran out unrenewed (the database unreachable, say) may have no other copy anywhere: there
            // the parked copy is what runs the job again, where acking it would lose the job.
            // A lease still ours (a renewal that committed but answered too late) goes first, as on every
            // other way out: left behind, the parked copy would wait it out, and so would every other.
            await ReleaseQuietlyAsync(consumerId, key, owner);
            await DeferOrSkipAsync(context, descriptor.ConsumerName, consumerId, key, fingerprint, cancellationToken);
        }
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-lease-inbox");

    /// <summary>
    /// Runs the claimed message and commits its results; false when its lease was lost: the run was
    /// stopped, or its results found the lease another's when they came to commit.
    /// </summary>
    /// <param name="started">Told once the job's attempt is counted, before anything of it runs.</param>
    private async Task<bool> RunAsync(
        ConsumeContext<T> context, IPipe<ConsumeContext<T>> next, JobRef job, byte[]? fingerprint,
        string consumerId, string key, string owner, TimeSpan lease, DateTimeOffset leasedUntil, AttemptStarted started)
    {
        var cancellationToken = context.CancellationToken;
        if (await tracker.StartAttemptAsync(job, fingerprint, cancellationToken) is not (var jobId, var attempt))
        {
            if (await tracker.ConflictingJobFingerprintAsync(job, fingerprint, cancellationToken) is { } jobConflict)
            {
                // The job row was created for another command (the Api accepted that one): the lease goes
                // with the exception, and the job stays as it is.
                throw InboxConflicts.Found(metrics, logger, consumerId, key, context.MessageId, jobConflict, fingerprint);
            }

            // Cancelled, or succeeded already: mark the message handled without running it. A redelivered copy of a
            // cancelled job's command gets no note here, unlike in the short jobs' inboxes (JobTracker.RecordCancelledRedeliveryAsync):
            // this inbox commits an attempt's count before anything of it runs, so a worker killed mid-attempt leaves the
            // job running, which refuses a cancel; a cancelled job's earlier deliveries started nothing.
            await CompleteAsync(job, consumerId, key, owner, succeeded: false, cancellationToken);
            await SettledByInbox.NotifyAsync(context, consumerId);
            return true;
        }

        started.Started = true;
        ClaimedAttempt.Set(context, attempt);
        var startedAt = metrics.AttemptStarted(job with { Attempt = attempt }, context, time);
        using var logScope = JobLogScope.Begin(logger, job with { JobId = jobId }, context);
        // Fires when another worker has taken the lease over, or when it runs out unrenewed (from then
        // on another worker may take it over at any moment); each renewal puts it off.
        using var leaseLost = new CancellationTokenSource(Until(leasedUntil), time);
        using var outOfTime = new CancellationTokenSource(DeliveryTimeLeft(context) is { } left ? TimerDelay(left) : Timeout.InfiniteTimeSpan, time);
        // Whichever stopped the run first says how it ended (a lease lost and a deadline at once: the lease, as before).
        // A run stopped at its deadline stops its heartbeat with it, so its lease runs out unrenewed while the run
        // winds down (a cancelled query the database is slow to give up, say): taken for a lost lease, such a run
        // was parked instead of failing as out of time, its copy ran and counted an attempt again outside the
        // redelivery budget, and a job that always runs too long could start over for ever.
        var stoppedBy = new FirstStop();
        using var onLeaseLost = leaseLost.Token.Register(() => stoppedBy.Set(FirstStop.LeaseLost));
        using var onOutOfTime = outOfTime.Token.Register(() => stoppedBy.Set(FirstStop.OutOfTime));
        using var run = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, leaseLost.Token, outOfTime.Token);
        using var heartbeatStop = CancellationTokenSource.CreateLinkedTokenSource(run.Token);
        var heartbeat = HeartbeatAsync(consumerId, key, owner, lease, leaseLost, heartbeatStop.Token);
        try
        {
            await next.Send(new LeaseConsumeContext<T>(context, run.Token));
        }
        catch (Exception) when (stoppedBy.Was(FirstStop.LeaseLost) && !cancellationToken.IsCancellationRequested)
        {
            // However it ended, the run is no longer ours to commit or to count as failed.
            LogRunAbandoned(consumerId, key);
            return false;
        }
        catch (Exception) when (outOfTime.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            // Not wrapped: how the run ended (a cancelled query, say) must not be taken for the failure.
            throw OutOfTime(context, consumerId, key);
        }
        finally
        {
            await heartbeatStop.CancelAsync();
            await heartbeat;
        }

        // The run is over: a shutdown from here on must not throw its result away (the statement timeout bounds the wait).
        if (!await CompleteAsync(job, consumerId, key, owner, succeeded: true, CancellationToken.None))
        {
            // The lease was lost between the run's end and its commit: nothing of the run committed, and
            // its copy is parked as when the lease is lost during the run. Acked, it could be the job's
            // last copy: a delivery that took the lease over and let it go again (its command conflicted
            // with the job, ADR 0011) holds none, and the job read running for good, its report never made.
            return false;
        }

        metrics.Succeeded(job.Kind, time.GetElapsedTime(startedAt));
        return true;
    }

    /// <summary>
    /// Claims the lease for <c>@owner</c>: a new key, or an expired lease of a holder that died, becomes ours; a live
    /// lease or a done row does not, unless the lease is this delivery's own (<see cref="DeliveryOwner"/>), left by
    /// an earlier attempt of it that is over: in-memory retries run one after another, never beside each other.
    /// A takeover runs this message's command, so the row says what this one says
    /// (nothing of the dead run's committed). Returns the transaction's id (<see cref="CommitOutcome.TransactionIdSql"/>),
    /// no row when the lease is not ours.
    /// </summary>
    private const string ClaimSql = $"""
        INSERT INTO inbox (consumer_id, message_key, message_id, received_at, status, lease_owner, lease_expires_at, payload_hash)
        VALUES (@consumer, @key, @message_id, @now, '{InboxStatus.Processing}', @owner, clock_timestamp() + @lease, @fingerprint)
        ON CONFLICT (consumer_id, message_key) DO UPDATE
           SET lease_owner = EXCLUDED.lease_owner, lease_expires_at = EXCLUDED.lease_expires_at, message_id = EXCLUDED.message_id,
               payload_hash = EXCLUDED.payload_hash
         WHERE inbox.status = '{InboxStatus.Processing}'
           AND (inbox.lease_expires_at < clock_timestamp() OR inbox.lease_owner = EXCLUDED.lease_owner)
        RETURNING {CommitOutcome.TransactionIdSql} AS "Value"
        """;

    /// <summary>
    /// When the lease that is ours now runs out by this worker's clock (counted from just before the
    /// claim, so no later than the database's expiry), or null when it is not ours.
    /// </summary>
    /// <remarks>
    /// In a transaction of its own, not as a statement committed on its own: the connection may break after the
    /// server applied the claim, its answer lost. Taken for failed, the lease stood under an owner nobody runs, and
    /// every copy of the message (this one's retry first) was parked until it lapsed. A statement in a transaction
    /// that loses its answer is rolled back with the broken connection, and a COMMIT that does is asked after
    /// (<see cref="CommitOutcome"/>, ADR 0001): committed, the lease is this run's, as it would have been. A COMMIT
    /// whose outcome cannot be told (the database out of reach for the question too) throws; the lease it may have
    /// left is released, or, should that fail too, taken back by this delivery's next attempt, whose owner it is.
    /// </remarks>
    private async Task<DateTimeOffset?> TryClaimAsync(
        string consumerId, string key, Guid? messageId, byte[]? fingerprint, string owner, TimeSpan lease, CancellationToken cancellationToken)
    {
        await using var claim = await dbFactory.CreateDbContextAsync(cancellationToken);
        var now = time.GetUtcNow();
        await using var transaction = await claim.Database.BeginTransactionAsync(cancellationToken);
        var claimed = await claim.Database.SqlQueryRaw<string>(ClaimSql,
            new NpgsqlParameter<string>("consumer", consumerId), new NpgsqlParameter<string>("key", key),
            new NpgsqlParameter<Guid?>("message_id", messageId), new NpgsqlParameter<DateTimeOffset>("now", now),
            new NpgsqlParameter<string>("owner", owner), new NpgsqlParameter<TimeSpan>("lease", lease),
            new NpgsqlParameter<byte[]?>("fingerprint", fingerprint))
            .ToListAsync(cancellationToken);
        if (claimed is not [var transactionId])
        {
            // Nothing of ours written: ended as the statement on its own ended, releasing the row the upsert locked.
            await transaction.CommitAsync(cancellationToken);
            return null;
        }

        Exception? answerLost;
        try
        {
            answerLost = await CommitOutcome.CommitAsync(transaction, dbFactory, transactionId, cancellationToken);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // Rolled back, or applied unseen (the question after it unanswered too): a lease of this delivery's goes, as
            // on every way out after a claim; where nothing was written, nothing goes. Once the transaction has ended:
            // still open, it would hold the row lock the release waits on. A release that fails too leaves the lease
            // to this delivery's next attempt, which takes it back (DeliveryOwner).
            await transaction.DisposeAsync();
            await ReleaseQuietlyAsync(consumerId, key, owner);
            throw;
        }

        if (answerLost is not null)
        {
            LogClaimAnswerLost(answerLost, consumerId, key);
        }

        return now + lease;
    }

    private async Task DeferOrSkipAsync(ConsumeContext<T> context, string consumerName, string consumerId, string key, byte[]? fingerprint, CancellationToken cancellationToken)
    {
        await using var read = await dbFactory.CreateDbContextAsync(cancellationToken);
        // How long the lease has left by the database's clock, which set it.
        var row = (await read.Database.SqlQuery<LeaseRow>($"""
            SELECT status, EXTRACT(EPOCH FROM lease_expires_at - clock_timestamp())::float8 AS seconds_left, payload_hash
              FROM inbox WHERE consumer_id = {consumerId} AND message_key = {key}
            """).ToListAsync(cancellationToken)).SingleOrDefault();
        if (row is { Status: InboxStatus.Done } && PayloadFingerprint.Conflicts(row.PayloadHash, fingerprint))
        {
            // Only against a finished run: a live lease's run may still fail, and then this one is the job.
            throw InboxConflicts.Found(metrics, logger, consumerId, key, context.MessageId, row.PayloadHash, fingerprint);
        }

        if (row is { Status: InboxStatus.Done })
        {
            LogDuplicate(consumerId, key);
            metrics.DuplicateSkipped(consumerId);
            await SettledByInbox.NotifyAsync(context, consumerId);
            return;
        }

        // Another worker is running it now: come back when its lease would lapse, not sooner. Or the
        // row is gone since the claim was refused (its run failed and let go of it to be claimed again,
        // or a command of other content took the lease and let go of it as a conflict): nobody holds
        // the job and nobody finished it, so this message is no duplicate; it comes back in a moment and
        // claims it (a missing row is always claimed).
        // The times this copy was parked count only as the worker sealed them: a sender's count (any text, negative, or
        // at int.MaxValue, where one more wrapped round to a negative) counts as none, as a forged attempt does.
        var parked = seal.ReadLeaseDeferrals(context.ReceiveContext, consumerId, key);
        var most = endpointOptions.Get(consumerName).MaxLeaseDeferrals;
        if (parked >= most && row is { Status: InboxStatus.Processing })
        {
            // A run that never ends (nothing stops one when the broker has no consumer_timeout) renews its lease for
            // ever, and this copy came back to it for ever. The job is that run's to settle: this copy goes to _error,
            // leaving the job as it is. Only behind a lease: a row gone since the claim is claimed when the copy is back.
            LogDeferralsSpent(consumerId, key, parked);
            metrics.LeaseDeferralsSpent(consumerId);
            throw new LeaseDeferralsSpentException(consumerId, key, parked,
                $"{ConsumerEndpointOptions.SectionName}:{consumerName}:{nameof(ConsumerEndpointOptions.MaxLeaseDeferrals)}");
        }

        var deferrals = parked + 1;
        var left = TimeSpan.FromSeconds(Math.Max(0, row?.SecondsLeft ?? 0));
        // Counted from the database's clock too (RedeliveryStore): this pod's own may be off.
        var delay = left + TimeSpan.FromMilliseconds(Random.Shared.Next(250, 1500));
        var headers = new Dictionary<string, string>
        {
            [RedeliveryHeaders.Deferrals] = deferrals.ToString(CultureInfo.InvariantCulture),
            [RedeliverySeal.LeaseDeferralsHeader] = seal.SealLeaseDeferrals(consumerId, key, deferrals),
        };
        // One stored copy per message and deferral: the broker's redelivery of this very copy is the same
        // row, while another copy under the key (a second publish, a command of other content) is parked
        // beside it instead of being acked with nothing stored.
        var copy = context.MessageId?.ToString("N") ?? Convert.ToHexString(fingerprint ?? []);
        var dueAt = await redeliveries.ScheduleAsync(context.ReceiveContext, context.MessageId, consumerId,
            $"{consumerId}:{key}:deferred:{copy}:{deferrals}", 0, delay, headers, cancellationToken);
        LogDeferred(consumerId, key, dueAt, deferrals, most);
        await SettledByInbox.NotifyAsync(context, consumerId);
    }

    private async Task HeartbeatAsync(string consumerId, string key, string owner, TimeSpan lease, CancellationTokenSource leaseLost, CancellationToken stop)
    {
        var period = lease / 3;
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(period, time, stop);
                await using var beat = await dbFactory.CreateDbContextAsync(stop);
                var beatAt = time.GetUtcNow();
                var renewed = await beat.Database.ExecuteSqlInterpolatedAsync($"""
                    UPDATE inbox SET lease_expires_at = clock_timestamp() + {lease}
                     WHERE consumer_id = {consumerId} AND message_key = {key} AND lease_owner = {owner} AND status = {InboxStatus.Processing}
                    """, stop);
                if (renewed == 0)
                {
                    LogLeaseLost(consumerId, key);
                    await leaseLost.CancelAsync();
                    return;
                }

                leaseLost.CancelAfter(Until(beatAt + lease));
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // A missed beat is survivable while the lease lasts; once it has run out, leaseLost stops the run.
                LogHeartbeatFailed(exception, consumerId, key);
            }
        }
    }

    private TimeSpan Until(DateTimeOffset moment) => Positive(moment - time.GetUtcNow());

    private static TimeSpan Positive(TimeSpan span) => span > TimeSpan.Zero ? span : TimeSpan.Zero;

    /// <summary>
    /// <paramref name="span"/> as a timer can hold it: a timer refuses more than about 49.7 days, which a
    /// consumer_timeout of up to a year leaves. A run that long is stopped early, never late.
    /// </summary>
    private static TimeSpan TimerDelay(TimeSpan span) => span < MaxTimerDelay ? Positive(span) : MaxTimerDelay;

    /// <summary>The longest delay a timer takes (<c>CancellationTokenSource</c> refuses more): 2^32 - 2 ms.</summary>
    private static readonly TimeSpan MaxTimerDelay = TimeSpan.FromMilliseconds(uint.MaxValue - 1);

    /// <summary>How long the delivery may stay unacked from now; null when the broker has no consumer_timeout.</summary>
    private TimeSpan? DeliveryTimeLeft(ConsumeContext context) =>
        DeliveryDeadline.Of(rabbitMq.Value.ConsumerTimeoutSeconds) - context.ReceiveContext.ElapsedTime;

    private void ThrowIfOutOfTime(ConsumeContext context, TimeSpan? left, string consumerId, string key)
    {
        if (left <= TimeSpan.Zero)
        {
            throw OutOfTime(context, consumerId, key);
        }
    }

    private DeliveryDeadlineException OutOfTime(ConsumeContext context, string consumerId, string key)
    {
        var unacked = context.ReceiveContext.ElapsedTime.TotalSeconds.ToString("0", CultureInfo.InvariantCulture);
        var timeout = rabbitMq.Value.ConsumerTimeoutSeconds;
        LogOutOfTime(consumerId, key, unacked, timeout);
        var message = $"Stopped: the delivery had been unacked for {unacked} s, close to RabbitMQ's consumer_timeout " +
            $"(RabbitMq:ConsumerTimeoutSeconds {timeout} s), which would close the channel and start the job over. " +
            "It goes to a delayed redelivery (a fresh delivery) while redeliveries last, then to _error.";
        return new DeliveryDeadlineException(message);
    }

    /// <summary>
    /// Marks the leased row done while the lease is still this run's; returns the transaction's id
    /// (<see cref="CommitOutcome.TransactionIdSql"/>), no row when the lease is another's.
    /// </summary>
    private const string CompleteSql = $"""
        UPDATE inbox SET status = '{InboxStatus.Done}', lease_owner = NULL, lease_expires_at = NULL
         WHERE consumer_id = @consumer AND message_key = @key AND lease_owner = @owner AND status = '{InboxStatus.Processing}'
        RETURNING {CommitOutcome.TransactionIdSql} AS "Value"
        """;

    private async Task<bool> CompleteAsync(JobRef job, string consumerId, string key, string owner, bool succeeded, CancellationToken cancellationToken)
    {
        await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        db.Database.AutoSavepointsEnabled = false;
        // The row's update also returns the transaction's id (no round trip of its own), asked after should the COMMIT fail.
        var done = await db.Database.SqlQueryRaw<string>(CompleteSql,
            new NpgsqlParameter("consumer", consumerId), new NpgsqlParameter("key", key), new NpgsqlParameter("owner", owner))
            .ToListAsync(cancellationToken);
        if (done is not [var transactionId])
        {
            // Our lease lapsed and another worker took the job over: its result will stand, not ours.
            await transaction.RollbackAsync(cancellationToken);
            LogLeaseLost(consumerId, key);
            return false;
        }

        if (succeeded)
        {
            await db.SaveChangesAsync(cancellationToken);
            await tracker.MarkSucceededAsync(db, job, cancellationToken);
        }

        // The connection may have broken after the server applied the COMMIT, its answer lost: taken for rolled
        // back, a run that succeeded counted a failed attempt and no success, and its retry was skipped as a
        // duplicate of itself. Asked after only when the COMMIT failed (ADR 0004, 0001).
        if (await CommitOutcome.CommitAsync(transaction, dbFactory, transactionId, cancellationToken) is { } answerLost)
        {
            LogCommitAnswerLost(answerLost, consumerId, key);
        }

        return true;
    }

    private async Task ReleaseQuietlyAsync(string consumerId, string key, string owner)
    {
        try
        {
            await using var release = await dbFactory.CreateDbContextAsync(CancellationToken.None);
            await release.Database.ExecuteSqlInterpolatedAsync($"""
                DELETE FROM inbox
                 WHERE consumer_id = {consumerId} AND message_key = {key} AND lease_owner = {owner} AND status = {InboxStatus.Processing}
                """, CancellationToken.None);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The lease then simply expires.
            LogReleaseFailed(exception, consumerId, key);
        }
    }

    private async Task RecordFailureQuietlyAsync(JobRef job, Exception failure)
    {
        try
        {
            await tracker.RecordAttemptFailureAsync(job, failure, countAttempt: false, messageId: null, CancellationToken.None);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            LogReleaseFailed(exception, job.Kind, job.BusinessKey);
        }
    }

    /// <summary>
    /// The lease owner of one delivery (a payload of its receive context), the same for each of its in-memory retries
    /// in this process: a lease that an attempt's claim may have left behind unseen (its commit's outcome unknown, its
    /// release failed) is then recognised as the delivery's own by the next attempt, which takes it back instead of
    /// parking its copy until the lease lapses. Any other delivery, a redelivered copy of the same message too, has an
    /// owner of its own and meets that lease as another's. Not on the consume context: each attempt runs in a message
    /// scope of its own, whose payloads go with it.
    /// </summary>
    private sealed class DeliveryOwner
    {
        private readonly string _value = $"{Environment.MachineName}/{Environment.ProcessId}/{Guid.NewGuid():N}";

        public static string Of(ConsumeContext context) => context.ReceiveContext.GetOrAddPayload(() => new DeliveryOwner())._value;
    }

    /// <summary>Whether a run's attempt was counted (<see cref="JobTracker.StartAttemptAsync"/>): one that failed before has no attempt to fail.</summary>
    private sealed class AttemptStarted
    {
        public bool Started { get; set; }
    }

    /// <summary>
    /// What stopped a run first, of its lease lost (<see cref="LeaseLost"/>) and its delivery's deadline
    /// (<see cref="OutOfTime"/>): set once, from the tokens' callbacks, which may run on a timer's thread.
    /// </summary>
    private sealed class FirstStop
    {
        public const int LeaseLost = 1;

        public const int OutOfTime = 2;

        private int _first;

        public void Set(int stop) => Interlocked.CompareExchange(ref _first, stop, 0);

        public bool Was(int stop) => Volatile.Read(ref _first) == stop;
    }

    /// <summary>An inbox row's status and its lease's time left by the database's clock (negative once lapsed, null when none).</summary>
    private sealed record LeaseRow(string Status, double? SecondsLeft, byte[]? PayloadHash);

    [LoggerMessage(Level = LogLevel.Information, Message = "Duplicate skipped by the inbox: consumer {ConsumerId}, key {Key}")]
    private partial void LogDuplicate(string consumerId, string key);

    [LoggerMessage(Level = LogLevel.Information, Message = "{ConsumerId} {Key} is leased by another worker; deferred until {DueAt:O} ({Deferral} of at most {MaxDeferrals})")]
    private partial void LogDeferred(string consumerId, string key, DateTimeOffset dueAt, int deferral, int maxDeferrals);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key} is leased by another worker again after this copy was parked {Deferrals} times, the most allowed; the copy goes to the error queue unrun, the job left to the lease's run")]
    private partial void LogDeferralsSpent(string consumerId, string key, int deferrals);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: the lease was lost to another worker")]
    private partial void LogLeaseLost(string consumerId, string key);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: the run was stopped because its lease was lost; its results are dropped and the message is parked")]
    private partial void LogRunAbandoned(string consumerId, string key);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: stopped after its delivery was unacked for {UnackedSeconds} s, near RabbitMQ's consumer_timeout ({ConsumerTimeoutSeconds} s); it fails as out of time")]
    private partial void LogOutOfTime(string consumerId, string key, string unackedSeconds, int consumerTimeoutSeconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: the lease's claim failed to commit, but the database had applied it (its answer was lost); the lease is this run's")]
    private partial void LogClaimAnswerLost(Exception exception, string consumerId, string key);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: the final commit failed, but the database had applied it (its answer was lost); settled as committed")]
    private partial void LogCommitAnswerLost(Exception exception, string consumerId, string key);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: lease heartbeat failed")]
    private partial void LogHeartbeatFailed(Exception exception, string consumerId, string key);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: could not release the lease or record the failure")]
    private partial void LogReleaseFailed(Exception exception, string consumerId, string key);
}
