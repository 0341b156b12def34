using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// An inbox batch that one message breaks must not fail the others (<see cref="InboxBatcher"/>),
/// driven directly against the real database. The culprit is a failed attempt whose job row cannot
/// be written: a trigger refuses it as a unique violation of the jobs' primary key.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxBatchFallbackTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private const string ConsumerId = "inbox-fallback-test";

    /// <summary>The one warning of an attempt counted on a job cancelled after it ran, succeeded or failed (JobTracker).</summary>
    private const string AttemptBeforeCancelEvent = "LogAttemptBeforeCancel";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private readonly CapturedLogs _logs = new();
    private readonly List<TestTrigger> _culprits = [];
    private DrivenBatcher? _batcher;

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        if (_batcher is not null)
        {
            await _batcher.DisposeAsync();
        }

        foreach (var culprit in _culprits)
        {
            await culprit.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_message_that_succeeded_commits_when_a_failed_attempt_in_its_batch_breaks_the_batch()
    {
        var (culprit, good) = (Key(), Key());
        var payment = Guid.NewGuid();
        var members = await JoinOneBatchAsync(culprit, good);

        await BreakJobRowAsync(members[0]);
        members[0].RanAndFailed();
        members[1].RanSuccessfully([Ledger(payment)]);

        Assert.False(await members[0].Completed.WaitAsync(Patience));
        AssertBatchBrokeAndFellBack(members[0]);
        Assert.True(await members[1].Completed.WaitAsync(Patience), $"the good message failed with the batch: {members[1].BatchFailure}");
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == payment));
        Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.Kind == Kind && j.BusinessKey == good)).Status);
        Assert.Equal(BatchSettlement.Applied, members[1].Settlement);
        Assert.Equal((1, 0, 0), CountedOutcome(members[1]));
        // The failed attempt's inbox row is not kept: its retry must run it.
        Assert.False(await db.Inbox.AnyAsync(i => i.MessageKey == culprit));
    }

    [Fact]
    public async Task Messages_that_only_waited_for_the_batch_are_settled_when_another_message_breaks_it()
    {
        var (culprit, finished, twice) = (Key(), Key(), Key());
        await InsertJobAsync(finished, JobStatus.Succeeded);
        var members = await JoinOneBatchAsync(culprit, finished, twice, twice);
        Assert.Equal(InboxClaim.NotRunnable, await members[1].Claimed);
        Assert.Equal(InboxClaim.DuplicateInBatch, await members[3].Claimed);

        await BreakJobRowAsync(members[0]);
        members[0].RanAndFailed();
        members[2].RanSuccessfully([]);

        Assert.False(await members[0].Completed.WaitAsync(Patience));
        AssertBatchBrokeAndFellBack(members[0]);
        // A finished job's copy is recorded as handled; the copy that waited for its twin acks with it.
        Assert.True(await members[1].Completed.WaitAsync(Patience), $"the finished job's copy failed with the batch: {members[1].BatchFailure}");
        Assert.True(await members[2].Completed.WaitAsync(Patience), $"the first copy failed with the batch: {members[2].BatchFailure}");
        Assert.True(await members[3].Completed.WaitAsync(Patience), $"the second copy failed with the batch: {members[3].BatchFailure}");
        await using var db = fixture.CreateDbContext();
        Assert.True(await db.Inbox.AnyAsync(i => i.MessageKey == finished));
        Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.Kind == Kind && j.BusinessKey == twice)).Status);
    }

    [Fact]
    public async Task A_copy_of_the_message_that_broke_its_batch_is_acked_with_it_not_run_again()
    {
        var (culprit, good) = (Key(), Key());
        var payment = Guid.NewGuid();
        var members = await JoinOneBatchAsync(culprit, culprit, good);
        Assert.Equal(InboxClaim.DuplicateInBatch, await members[1].Claimed);

        await BreakJobRowAsync(members[0]);
        members[0].RanAndFailed();
        members[2].RanSuccessfully([Ledger(payment)]);

        Assert.False(await members[0].Completed.WaitAsync(Patience));
        AssertBatchBrokeAndFellBack(members[0]);
        // The failed copy carries the command through its retries, as in a batch that commits: the other
        // is acked, where settling it again made it runnable and its consumer ran a second time.
        Assert.True(await members[1].Completed.WaitAsync(Patience), $"the copy was sent round to run again: {members[1].BatchFailure}");
        Assert.True(await members[2].Completed.WaitAsync(Patience), $"the good message failed with the batch: {members[2].BatchFailure}");
        await using var db = fixture.CreateDbContext();
        Assert.False(await db.Inbox.AnyAsync(i => i.MessageKey == culprit));
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == payment));
    }

    [Fact]
    public async Task A_message_settled_alone_after_its_batch_failed_is_a_conflict_when_its_key_was_applied_from_another_command_meanwhile()
    {
        // The message ran in the batch; before it is settled again alone, another pod commits its key
        // from a command with other content (ADR 0011). Its effects must not apply, nor may it be acked
        // as handled: it is the conflict. The other pod's insert waits for the batch's inbox row, and a
        // lock on the inbox table asked for behind it holds the fallback back (each message settled
        // alone claims its inbox row again) until the other command's row has committed. Not a row lock
        // waiting for the batch: when the batch rolls back, a waiter for a row or key has no place in
        // line, and the fallback's claim may take it first; table locks are granted in the order asked.
        var (culprit, reused) = (Key(), Key());
        var (ours, theirs) = (Enumerable.Repeat((byte)0x0A, 16).ToArray(), Enumerable.Repeat((byte)0x0B, 16).ToArray());
        var members = await JoinOneBatchAsync([(culprit, null), (reused, ours)]);
        Assert.Equal(InboxClaim.Run, await members[1].Claimed);

        await using var other = new NpgsqlConnection(fixture.ConnectionString);
        await other.OpenAsync();
        await using var otherPod = await other.BeginTransactionAsync();
        await using var insert = new NpgsqlCommand(
            "INSERT INTO inbox (consumer_id, message_key, message_id, received_at, payload_hash, status) VALUES (@consumer, @key, @id, now(), @hash, 'done') ON CONFLICT DO NOTHING",
            other, otherPod);
        insert.Parameters.AddWithValue("consumer", ConsumerId);
        insert.Parameters.AddWithValue("key", reused);
        insert.Parameters.AddWithValue("id", Guid.NewGuid());
        insert.Parameters.AddWithValue("hash", theirs);
        var inserted = insert.ExecuteNonQueryAsync();
        // Waiting for the batch's row of the key, the insert holds its lock on the table: the one asked next waits for both.
        await fixture.WaitForLockWaitersAsync(1);
        await using var holder = new NpgsqlConnection(fixture.ConnectionString);
        await holder.OpenAsync();
        await using var hold = await holder.BeginTransactionAsync();
        await using var lockInbox = new NpgsqlCommand("LOCK TABLE inbox IN SHARE MODE", holder, hold);
        var locked = lockInbox.ExecuteNonQueryAsync();
        await fixture.WaitForLockWaitersAsync(2);

        var payment = Guid.NewGuid();
        await BreakJobRowAsync(members[0]);
        members[0].RanAndFailed();
        members[1].RanSuccessfully([Ledger(payment)]);
        Assert.Equal(1, await inserted.WaitAsync(Patience));
        await otherPod.CommitAsync();
        await locked.WaitAsync(Patience);
        await hold.CommitAsync();

        Assert.False(await members[0].Completed.WaitAsync(Patience));
        AssertBatchBrokeAndFellBack(members[0]);
        Assert.False(await members[1].Completed.WaitAsync(Patience), "the message was settled as handled under a key another command took");
        Assert.Equal(theirs, members[1].ConflictingFingerprint);
        await using var db = fixture.CreateDbContext();
        Assert.False(await db.Ledger.AnyAsync(l => l.PaymentId == payment));
        Assert.Equal(theirs, (await db.Inbox.SingleAsync(i => i.ConsumerId == ConsumerId && i.MessageKey == reused)).PayloadHash);
        Assert.False(await db.Jobs.AnyAsync(j => j.Kind == Kind && j.BusinessKey == reused));
    }

    [Fact]
    public async Task A_message_whose_job_is_cancelled_before_it_is_settled_alone_is_flagged_on_the_job_and_in_a_warning()
    {
        // The batch rolls back, and lets its job rows go, before its messages are settled again alone: a cancel can take
        // a job in between, which reads queued with no attempt again, although its message's consumer ran (the charge went
        // out). A lock on the inbox table asked for while the batch holds its inbox rows is granted when it rolls back, and
        // holds the fallback's claim (each message settled alone claims its inbox row again) until the cancel has committed.
        var (culprit, good, jobId) = (Key(), Key(), Guid.NewGuid());
        await InsertJobAsync(good, JobStatus.Queued, jobId);
        await using var api = await fixture.StartApiAsync();
        var members = await JoinOneBatchAsync(culprit, good);
        Assert.Equal(InboxClaim.Run, await members[1].Claimed);
        await BreakJobRowAsync(members[0]);

        await using var holder = new NpgsqlConnection(fixture.ConnectionString);
        await holder.OpenAsync();
        await using var hold = await holder.BeginTransactionAsync();
        await using var lockInbox = new NpgsqlCommand("LOCK TABLE inbox IN SHARE MODE", holder, hold);
        var locked = lockInbox.ExecuteNonQueryAsync();
        await fixture.WaitForLockWaitersAsync(1);

        var payment = Guid.NewGuid();
        members[0].RanAndFailed();
        members[1].RanSuccessfully([Ledger(payment)]);
        // The culprit is settled first in the fallback, after the rollback: the job row is free, and the good message's claim waits.
        Assert.False(await members[0].Completed.WaitAsync(Patience));
        AssertBatchBrokeAndFellBack(members[0]);
        await locked.WaitAsync(Patience);
        await fixture.WaitForLockWaitersAsync(1);
        using (var cancel = await api.Client.CancelJobAsync(jobId))
        {
            Assert.Equal(System.Net.HttpStatusCode.OK, cancel.StatusCode);
        }

        Assert.False(members[1].Completed.IsCompleted);
        await hold.CommitAsync();

        // Its consumer ran: acked (not run again), its effects dropped, the job left cancelled but flagged.
        Assert.True(await members[1].Completed.WaitAsync(Patience), $"the message was sent round again: {members[1].BatchFailure}");
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
        Assert.Equal((JobStatus.Cancelled, 1), (job.Status, job.Attempts));
        Assert.NotNull(job.LastError);
        Assert.Contains(members[1].MessageId!.Value.ToString(), job.LastError, StringComparison.Ordinal);
        Assert.Contains("before the cancel", job.LastError, StringComparison.Ordinal);
        Assert.False(await db.Ledger.AnyAsync(l => l.PaymentId == payment));
        Assert.True(await db.Inbox.AnyAsync(i => i.ConsumerId == ConsumerId && i.MessageKey == good));
        var warning = Assert.Single(_logs.Entries, e => e.Level == LogLevel.Warning && e.Message.Contains(jobId.ToString(), StringComparison.Ordinal));
        Assert.Contains($"{Kind}/{good}", warning.Message, StringComparison.Ordinal);
        Assert.Contains(members[1].MessageId!.Value.ToString(), warning.Message, StringComparison.Ordinal);
        Assert.Contains("it succeeded, but its inbox batch failed", warning.Message, StringComparison.Ordinal);
        Assert.Equal(AttemptBeforeCancelEvent, warning.EventId.Name);
        // Acked, but its job did not succeed: the filter counts no success (nor a failed attempt: its consumer did not fail).
        Assert.Equal(BatchSettlement.CancelledAfterRun, members[1].Settlement);
        Assert.Equal((0, 0, 0), CountedOutcome(members[1]));
    }

    [Fact]
    public async Task A_message_whose_key_another_copy_applied_before_it_was_settled_alone_is_counted_as_a_duplicate_not_a_second_success()
    {
        // The batch rolls back before its messages are settled again alone: a copy of the good message in another batch,
        // whose claim waited for the batch's inbox row, takes the key then, runs and commits. Settled alone, the good
        // message finds its key applied: acked with its effects dropped, a duplicate. Counted a success as well, the job's
        // one success read two. A lock on the inbox table asked for behind the copy's claim holds the fallback's claim
        // (each message settled alone claims its inbox row again) until the copy's batch has committed.
        var (culprit, good) = (Key(), Key());
        var payment = Guid.NewGuid();
        var members = await JoinOneBatchAsync(culprit, good);
        Assert.Equal(InboxClaim.Run, await members[1].Claimed);
        await BreakJobRowAsync(members[0]);

        // The batch waits for its consumers, out of the database: the copy gets a batch of its own, whose claim waits for the key.
        var copy = Join(good);
        await fixture.WaitForLockWaitersAsync(1);
        await using var holder = new NpgsqlConnection(fixture.ConnectionString);
        await holder.OpenAsync();
        await using var hold = await holder.BeginTransactionAsync();
        await using var lockInbox = new NpgsqlCommand("LOCK TABLE inbox IN SHARE MODE", holder, hold);
        var locked = lockInbox.ExecuteNonQueryAsync();
        await fixture.WaitForLockWaitersAsync(2);

        members[0].RanAndFailed();
        members[1].RanSuccessfully([Ledger(payment)]);
        Assert.False(await members[0].Completed.WaitAsync(Patience));
        AssertBatchBrokeAndFellBack(members[0]);
        Assert.Equal(InboxClaim.Run, await copy.Claimed.WaitAsync(Patience));
        copy.RanSuccessfully([Ledger(payment)]);
        Assert.True(await copy.Completed.WaitAsync(Patience), $"the copy failed: {copy.BatchFailure}");
        await locked.WaitAsync(Patience);
        Assert.False(members[1].Completed.IsCompleted);
        await hold.CommitAsync();

        // Acked, not sent round to run again; the job succeeded once, by the copy.
        Assert.True(await members[1].Completed.WaitAsync(Patience), $"the message was sent round again: {members[1].BatchFailure}");
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Kind == Kind && j.BusinessKey == good);
        Assert.Equal((JobStatus.Succeeded, 1), (job.Status, job.Attempts));
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == payment));
        // The copy counted the job's success; this one counts as a duplicate, logged as one, not as a second success.
        Assert.Equal(BatchSettlement.Applied, copy.Settlement);
        Assert.Equal((1, 0, 0), CountedOutcome(copy));
        Assert.Equal(BatchSettlement.AlreadySettled, members[1].Settlement);
        var logs = new CapturedLogs();
        Assert.Equal((0, 0, 1), CountedOutcome(members[1], logs));
        var duplicate = Assert.Single(logs.Entries, e => e.Message.StartsWith("Duplicate skipped by the inbox", StringComparison.Ordinal));
        Assert.Contains(good, duplicate.Message, StringComparison.Ordinal);
        Assert.Contains(members[1].MessageId!.Value.ToString(), duplicate.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_failed_attempt_whose_job_is_cancelled_before_its_failure_path_counts_it_is_flagged_on_the_job_and_in_a_warning()
    {
        // A batch that rolls back lets its job rows go before each failed message's failure path counts its attempt
        // again (JobTracker.RecordAttemptFailureAsync, as BatchedInboxFilter calls it once the batch settled the message):
        // a cancel can take the job in between, which reads queued with no attempt, though the consumer ran (and failed
        // after its effect may have gone out). Both messages here failed, so the batch settles them without falling back.
        var (culprit, failed, jobId) = (Key(), Key(), Guid.NewGuid());
        await InsertJobAsync(failed, JobStatus.Queued, jobId);
        await using var api = await fixture.StartApiAsync();
        var members = await JoinOneBatchAsync(culprit, failed);
        Assert.Equal(InboxClaim.Run, await members[1].Claimed);
        await BreakJobRowAsync(members[0]);

        members[0].RanAndFailed();
        members[1].RanAndFailed();
        Assert.False(await members[0].Completed.WaitAsync(Patience));
        Assert.False(await members[1].Completed.WaitAsync(Patience));
        Assert.False(members[1].AttemptRecorded);
        using (var cancel = await api.Client.CancelJobAsync(jobId))
        {
            Assert.Equal(System.Net.HttpStatusCode.OK, cancel.StatusCode);
        }

        var logs = new CapturedLogs();
        using var loggers = new LoggerFactory([logs]);
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System, loggers.CreateLogger<JobTracker>());
        var attempt = await tracker.RecordAttemptFailureAsync(
            new JobRef(Kind, failed, members[1].JobId), new HttpRequestException("gateway answered 502"), countAttempt: true, members[1].MessageId, CancellationToken.None);

        Assert.Null(attempt);
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
        Assert.Equal((JobStatus.Cancelled, 1), (job.Status, job.Attempts));
        Assert.NotNull(job.LastError);
        Assert.Contains(members[1].MessageId!.Value.ToString(), job.LastError, StringComparison.Ordinal);
        Assert.Contains("before the cancel", job.LastError, StringComparison.Ordinal);
        var warning = Assert.Single(logs.Of(LogLevel.Warning, typeof(JobTracker).FullName!));
        Assert.Contains($"{Kind}/{failed}", warning.Message, StringComparison.Ordinal);
        Assert.Contains(jobId.ToString(), warning.Message, StringComparison.Ordinal);
        Assert.Contains(members[1].MessageId!.Value.ToString(), warning.Message, StringComparison.Ordinal);
        Assert.Contains("it failed: HttpRequestException: gateway answered 502", warning.Message, StringComparison.Ordinal);
        Assert.Equal(AttemptBeforeCancelEvent, warning.EventId.Name);

        // Its retry finds the job cancelled and is acked unrun; counted once, whatever writes the note again.
        Assert.Null(await tracker.RecordAttemptFailureAsync(
            new JobRef(Kind, failed, members[1].JobId), new HttpRequestException("gateway answered 502"), countAttempt: true, members[1].MessageId, CancellationToken.None));
        Assert.Equal(1, (await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId)).Attempts);
    }

    [Fact]
    public async Task A_redelivered_copy_of_a_cancelled_job_s_command_leaves_the_note_of_an_attempt_that_ran_before_the_cancel()
    {
        // The attempt that ran before the cancel is counted and said so on the job (JobTracker.RecordAttemptBeforeCancelAsync);
        // a copy of its command the broker hands out again (the ack was lost with the worker) is acked unrun, and its own note
        // ("may have started") is the weaker one: it must not take the place of the note of an attempt known to have run.
        var (key, jobId, ran, redelivered) = (Key(), Guid.NewGuid(), Guid.NewGuid(), Guid.NewGuid());
        await InsertJobAsync(key, JobStatus.Cancelled, jobId);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(jobId, await JobTracker.RecordAttemptBeforeCancelAsync(db, Kind, key, ran, DateTimeOffset.UtcNow, CancellationToken.None));
        }

        var logs = new CapturedLogs();
        using var loggers = new LoggerFactory([logs]);
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System, loggers.CreateLogger<JobTracker>());
        var flagged = await ReadJobAsync(jobId);

        Assert.True(await tracker.RecordCancelledRedeliveryAsync(new JobRef(Kind, key, jobId), redelivered, CancellationToken.None));

        var job = await ReadJobAsync(jobId);
        Assert.Equal((JobStatus.Cancelled, 1, flagged.LastError, flagged.UpdatedAt), (job.Status, job.Attempts, job.LastError, job.UpdatedAt));
        Assert.Contains(ran.ToString(), job.LastError, StringComparison.Ordinal);
        Assert.Contains("ran before the cancel", job.LastError, StringComparison.Ordinal);
        // The copy still came back redelivered after the cancel: the warning names it.
        var warning = Assert.Single(logs.Of(LogLevel.Warning, typeof(JobTracker).FullName!));
        Assert.Contains(redelivered.ToString(), warning.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_note_of_attempts_that_ran_before_a_cancel_names_each_message_up_to_a_handful_and_counts_each_once()
    {
        // Several attempts of one job can each find it cancelled after they ran (copies of its command in failed batches, a
        // failure path counting again): each is counted, and the note must name every one, not only the last. Written again
        // for a message it names (a retry of the write), it neither changes nor counts.
        var (key, jobId) = (Key(), Guid.NewGuid());
        await InsertJobAsync(key, JobStatus.Cancelled, jobId);
        var messages = Enumerable.Range(0, 7).Select(_ => Guid.NewGuid()).ToList();

        await RecordAttemptBeforeCancelAsync(key, messages[0]);
        await RecordAttemptBeforeCancelAsync(key, messages[1]);
        var two = await ReadJobAsync(jobId);
        await RecordAttemptBeforeCancelAsync(key, messages[0]);

        var again = await ReadJobAsync(jobId);
        Assert.Equal((JobStatus.Cancelled, 2), (again.Status, again.Attempts));
        Assert.Equal((two.LastError, two.UpdatedAt), (again.LastError, again.UpdatedAt));
        Assert.StartsWith($"An attempt (message {messages[0]}) ran before the cancel took effect", again.LastError, StringComparison.Ordinal);
        Assert.Contains(messages[1].ToString(), again.LastError, StringComparison.Ordinal);

        foreach (var message in messages.Skip(2))
        {
            await RecordAttemptBeforeCancelAsync(key, message);
        }

        // A handful named, the rest counted: the column stays readable however many came.
        var all = await ReadJobAsync(jobId);
        Assert.Equal(7, all.Attempts);
        Assert.All(messages.Take(5), m => Assert.Contains(m.ToString(), all.LastError, StringComparison.Ordinal));
        Assert.All(messages.Skip(5), m => Assert.DoesNotContain(m.ToString(), all.LastError, StringComparison.Ordinal));
        Assert.EndsWith("and 2 more.", all.LastError, StringComparison.Ordinal);
    }

    private async Task RecordAttemptBeforeCancelAsync(string key, Guid messageId)
    {
        await using var db = fixture.CreateDbContext();
        Assert.NotNull(await JobTracker.RecordAttemptBeforeCancelAsync(db, Kind, key, messageId, DateTimeOffset.UtcNow, CancellationToken.None));
    }

    private async Task<Job> ReadJobAsync(Guid jobId)
    {
        await using var db = fixture.CreateDbContext();
        return await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
    }

    private static string Key() => Guid.NewGuid().ToString();

    /// <summary>
    /// What <see cref="BatchedInboxFilter{T}"/> counts for <paramref name="member"/> once it completed committed
    /// (<see cref="BatchedInboxOutcome"/>): successes and failed attempts of the job's kind, and duplicates skipped by its
    /// consumer; what it logs goes to <paramref name="logs"/>, if given.
    /// </summary>
    private static (int Succeeded, int Failed, int Duplicates) CountedOutcome(BatchMember member, CapturedLogs? logs = null)
    {
        var metrics = HostMeters.OwnJobMetrics();
        using var succeeded = WorkerMetric.Succeeded(Kind);
        using var failed = WorkerMetric.AttemptsFailed(Kind);
        using var duplicates = WorkerMetric.Duplicates(ConsumerId);
        succeeded.Watch(metrics);
        failed.Watch(metrics);
        duplicates.Watch(metrics);
        var logger = (logs ?? new CapturedLogs()).CreateLogger(nameof(BatchedInboxOutcome));
        BatchedInboxOutcome.Count(metrics, logger, ConsumerId, new JobRef(Kind, member.MessageKey, member.JobId), member.MessageId, member, TimeSpan.FromMilliseconds(5));
        return (succeeded.Count, failed.Count, duplicates.Count);
    }

    /// <summary>
    /// The batch did break on the culprit's job row (its id taken: a unique violation on the primary key)
    /// and its messages were settled one by one; else the others' outcomes prove nothing of the fallback.
    /// </summary>
    private void AssertBatchBrokeAndFellBack(BatchMember culprit)
    {
        var failure = Assert.IsType<PostgresException>(culprit.BatchFailure);
        Assert.Equal(PostgresErrorCodes.UniqueViolation, failure.SqlState);
        Assert.Equal("pk_jobs", failure.ConstraintName);
        Assert.Contains(_logs.Entries, e => e.Level == LogLevel.Warning && e.Message.Contains("committing its messages one by one", StringComparison.Ordinal));
    }

    private static LedgerEntry Ledger(Guid paymentId) => new()
    {
        PaymentId = paymentId,
        AccountId = "acct-fallback",
        AmountMinor = 500,
        Currency = "EUR",
        GatewayChargeId = $"ch_{paymentId:N}",
        ChargedAt = DateTimeOffset.UtcNow,
    };

    /// <summary>
    /// Members for <paramref name="keys"/>, all claimed in one batch: a first batch waits in its claim
    /// for a job-row lock the test holds while they join, and they start together once it is released.
    /// </summary>
    private Task<IReadOnlyList<BatchMember>> JoinOneBatchAsync(params string[] keys) =>
        JoinOneBatchAsync([.. keys.Select(k => (k, (byte[]?)null))]);

    private async Task<IReadOnlyList<BatchMember>> JoinOneBatchAsync((string Key, byte[]? Fingerprint)[] messages)
    {
        _batcher = DrivenBatcher.Start(fixture, ConsumerId, _logs.CreateLogger(nameof(InboxBatcher)));
        var blockedKey = Key();
        await InsertJobAsync(blockedKey, JobStatus.Queued);
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var hold = await connection.BeginTransactionAsync();
        await using (var lockRow = new NpgsqlCommand("SELECT 1 FROM jobs WHERE business_key = @key FOR UPDATE", connection, hold))
        {
            lockRow.Parameters.AddWithValue("key", blockedKey);
            await lockRow.ExecuteScalarAsync();
        }

        var blocked = Join(blockedKey);
        await fixture.WaitForLockWaitersAsync(1);
        var members = messages.Select(m => Join(m.Key, m.Fingerprint)).ToList();
        Assert.DoesNotContain(members, m => m.Claimed.IsCompleted);
        await hold.CommitAsync();

        Assert.Equal(InboxClaim.Run, await blocked.Claimed.WaitAsync(Patience));
        blocked.RanSuccessfully([]);
        Assert.True(await blocked.Completed.WaitAsync(Patience));
        foreach (var member in members)
        {
            await member.Claimed.WaitAsync(Patience);
        }

        return members;
    }

    private BatchMember Join(string key) => Join(key, fingerprint: null);

    private BatchMember Join(string key, byte[]? fingerprint) => _batcher!.Join(key, Guid.NewGuid(), fingerprint);

    /// <summary>
    /// The member's job row cannot be written: a trigger refuses it as a unique violation of the jobs'
    /// primary key, as a row whose id another job held once did.
    /// </summary>
    private async Task BreakJobRowAsync(BatchMember member)
    {
        var name = $"inbox_fallback_culprit_{_culprits.Count}";
        _culprits.Add(await TestTrigger.CreateAsync(fixture, name, "jobs", $"""
            CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'the job row of % cannot be written', NEW.business_key USING ERRCODE = 'unique_violation', CONSTRAINT = 'pk_jobs';
            END $$;
            CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON jobs FOR EACH ROW WHEN (NEW.business_key = '{member.MessageKey}') EXECUTE FUNCTION {name}();
            """));
    }

    private async Task InsertJobAsync(string key, string status, Guid? id = null, string kind = Kind)
    {
        var now = DateTimeOffset.UtcNow;
        await using var db = fixture.CreateDbContext();
        db.Jobs.Add(new Job { Id = id ?? Guid.NewGuid(), Kind = kind, BusinessKey = key, Status = status, CreatedAt = now, UpdatedAt = now });
        await db.SaveChangesAsync();
    }
}
