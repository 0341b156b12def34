using Conveyor.Contracts.Reports;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The lease inbox's (GenerateReport) short writes before the run, the lease's claim and the count of the run's
/// attempt, whose commit the server applied but whose answer never came (the connection dropped after the server
/// committed). Simulated by <see cref="LostCommitAnswerAfter"/>, which throws as Npgsql does for a broken socket where the commit's answer
/// would have been read: after the statement itself when it ran on its own (autocommit: its answer is the
/// commit's), after the COMMIT when it ran in a transaction; and, for a claim whose outcome cannot be told, the
/// statements after it that fail as the database stays out of reach a little longer. <see cref="InboxCommitOutcomeTests"/>
/// covers the final commit.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class LeaseInboxCommitOutcomeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "generate-report";
    private const string Account = "acct-lease-lost-answer";
    private const int LedgerRows = 10;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public Task A_lease_claim_applied_but_unanswered_is_the_runs_own_and_the_retry_runs_at_once() =>
        // A lease left behind under an owner nobody runs would hold every copy of the message off for ten minutes.
        AssertReportMadeOnceAtOnceAsync(new LostCommitAnswerAfter(ClaimLease), refused: 0);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public Task A_lease_claim_applied_but_unanswered_whose_outcome_cannot_be_told_is_taken_back_by_the_retry(bool releaseOutOfReach) =>
        // The database out of reach for the question after the claim's outcome too (and, with releaseOutOfReach, for
        // the release of the lease the claim may have left), then back: the claim applied, and nobody can tell. The
        // lease left under the failed attempt's owner would hold every copy of the message off for ten minutes.
        AssertReportMadeOnceAtOnceAsync(
            new LostCommitAnswerAfter(ClaimLease, releaseOutOfReach ? [OutcomeQuestion, ReleaseLease] : [OutcomeQuestion]),
            refused: releaseOutOfReach ? 2 : 1);

    [Fact]
    public async Task An_attempt_count_applied_but_unanswered_is_counted_once()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        var lost = new LostCommitAnswerAfter(CountAttempt);
        using var failedAttempts = WorkerMetric.AttemptsFailed(Queue);
        using var succeeded = WorkerMetric.Succeeded(Queue);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(), lost.AddTo);
        failedAttempts.Watch(worker.Services);
        succeeded.Watch(worker.Services);
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = Account, PageSize = 5 };
        var key = report.ReportId.ToString();

        var job = await lost.PublishUntilSucceededAsync(fixture, worker, Queue, report, key);

        // One attempt ran. Taken for not counted, the count that was applied was counted again by the retry: attempts 2.
        Assert.Equal((1, (string?)null), (job.Attempts, job.LastError));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(LedgerRows, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Equal(1, succeeded.Count);
        Assert.Equal(0, failedAttempts.Count);
    }

    /// <summary>Only LeaseInboxFilter's claim of a lease says this.</summary>
    private const string ClaimLease = "SET lease_owner = EXCLUDED.lease_owner";

    /// <summary>Only CommitOutcome's question after a COMMIT that threw says this.</summary>
    private const string OutcomeQuestion = "pg_xact_status";

    /// <summary>Only LeaseInboxFilter's release of its lease says this (its parameters numbered in order: consumer, key, owner).</summary>
    private const string ReleaseLease = "message_key = @p1 AND lease_owner = @p2";

    /// <summary>Only JobTracker's count of an attempt outside an inbox transaction says this.</summary>
    private const string CountAttempt = "AS claimed_id_free";

    /// <summary>
    /// Publishes a report to a worker whose lease claim loses its answer as <paramref name="lost"/> says (600 s leases), and
    /// asserts the report was made once, at once: never parked behind the lease its own claim took (taken for failed, or
    /// left by an attempt whose outcome nobody could tell, then by the in-memory retry of the very delivery), one attempt,
    /// no failed one, the inbox row done, the queue drained; and that <paramref name="refused"/> statements were refused
    /// as the database stayed out of reach.
    /// </summary>
    private async Task AssertReportMadeOnceAtOnceAsync(LostCommitAnswerAfter lost, int refused)
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        using var failedAttempts = WorkerMetric.AttemptsFailed(Queue);
        await using var worker = await fixture.StartWorkerAsync(
            WorkerSettings.With().Override(("Consumers:GenerateReport:LeaseSeconds", "600")), lost.AddTo);
        failedAttempts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = Account, PageSize = 5 };
        var key = report.ReportId.ToString();

        await publisher.PublishAsync(report);

        // Either the report is made, or its copy was parked behind the lease the claim left.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.True(await db.ScheduledMessages.AnyAsync() || await db.Jobs.AnyAsync(j => j.BusinessKey == key && j.Status == JobStatus.Succeeded),
                "neither made nor parked");
        });
        Assert.True(lost.Fired);
        await using var check = fixture.CreateDbContext();
        // Parked, the copy waited out the lease that its own claim had taken.
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Equal(refused, lost.Refused);
        var job = await check.Jobs.SingleAsync(j => j.BusinessKey == key);
        // A failed claim ran nothing and counted no attempt: the retry's run is the job's one attempt.
        Assert.Equal((JobStatus.Succeeded, 1, (string?)null), (job.Status, job.Attempts, job.LastError));
        Assert.Equal(LedgerRows, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(0, failedAttempts.Count);
    }
}
