using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The single-message inbox (<c>InboxBatchSize</c> 1) whose COMMIT was applied but whose answer never came (the
/// connection dropped after the server committed): the attempt succeeded and must be settled as such, not taken
/// for failed. The same for the lease inbox's final transaction (GenerateReport). Simulated, as in <see cref="InboxBatchCommitOutcomeTests"/>, by an interceptor (<see cref="LostCommitAnswerAfter"/>) that throws as Npgsql
/// does for a broken socket once the server has answered the inbox transaction's COMMIT.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxCommitOutcomeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "charge-payment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_job_whose_inbox_commit_applied_but_went_unanswered_is_settled_as_succeeded_not_as_a_failed_attempt()
    {
        var lost = new LostCommitAnswerAfter(MarkSucceeded);
        await using var gateway = await FakePaymentGateway.StartAsync();
        var settings = WorkerSettings.With(gateway).Override(("Consumers:ChargePayment:InboxBatchSize", "1"));
        using var succeeded = WorkerMetric.Succeeded(Queue);
        using var failedAttempts = WorkerMetric.AttemptsFailed(Queue);
        using var duplicates = WorkerMetric.Duplicates(Queue);
        await using var worker = await fixture.StartWorkerAsync(settings, lost.AddTo);
        succeeded.Watch(worker.Services);
        failedAttempts.Watch(worker.Services);
        duplicates.Watch(worker.Services);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-commit-outcome", AmountMinor = 900, Currency = "EUR" };
        var key = payment.PaymentId.ToString();

        var job = await lost.PublishUntilSucceededAsync(fixture, worker, Queue, payment, key);

        Assert.Equal(1, job.Attempts);
        Assert.Null(job.LastError);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, await check.Ledger.CountAsync(l => l.PaymentId == payment.PaymentId));
        Assert.Equal(1, gateway.RequestsFor(key));
        // Settled as the success it was, where it counted a failed attempt and no success, and its in-memory retry
        // found the inbox row and was acked as a duplicate.
        Assert.Equal(1, succeeded.Count);
        Assert.Equal(0, failedAttempts.Count);
        Assert.Equal(0, duplicates.Count);
    }

    [Fact]
    public async Task A_failed_attempt_whose_inbox_commit_applied_but_went_unanswered_is_counted_once()
    {
        var lost = new LostCommitAnswerAfter(RecordFailedAttempt);
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailNext(1, System.Net.HttpStatusCode.UnprocessableEntity);
        var settings = WorkerSettings.With(gateway).Override(("Consumers:ChargePayment:InboxBatchSize", "1"));
        await using var worker = await fixture.StartWorkerAsync(settings, lost.AddTo);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-commit-outcome", AmountMinor = 900, Currency = "EUR" };
        var key = payment.PaymentId.ToString();

        // Refused (422): a permanent failure, dead-lettered after its one attempt.
        await publisher.PublishAsync(payment);

        await Eventually.AssertAsync(async () => Assert.Equal(1u, await fixture.ReadyAsync($"{Queue}_error")));
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.True(lost.Fired);
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.SingleAsync(j => j.BusinessKey == key);
        Assert.Equal(JobStatus.DeadLettered, job.Status);
        // Its failure was recorded, and the attempt counted, by the commit that was applied: taken for rolled back,
        // the attempt was counted a second time and the job read attempts 2 after one attempt.
        Assert.Equal(1, job.Attempts);
        Assert.Contains("422", job.LastError, StringComparison.Ordinal);
        Assert.Equal(1, gateway.RequestsFor(key));
        Assert.False(await check.Inbox.AnyAsync(i => i.MessageKey == key));
    }

    [Fact]
    public async Task A_leased_report_whose_final_commit_applied_but_went_unanswered_is_settled_as_succeeded_not_as_a_failed_attempt()
    {
        // The lease inbox (long jobs) commits a run's results, its inbox row done and the job's success in one final
        // transaction, which marks the job succeeded with the same statement.
        var lost = new LostCommitAnswerAfter(MarkSucceeded);
        const string reports = "generate-report";
        const string account = "acct-lease-commit-outcome";
        await fixture.SeedLedgerAsync(account, 10);

        using var succeeded = WorkerMetric.Succeeded(reports);
        using var failedAttempts = WorkerMetric.AttemptsFailed(reports);
        using var duplicates = WorkerMetric.Duplicates(reports);
        // Counted at the end: MassTransit declares an _error queue only when it first moves a message there.
        await fixture.DeclareAsync($"{reports}_error");
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(), lost.AddTo);
        succeeded.Watch(worker.Services);
        failedAttempts.Watch(worker.Services);
        duplicates.Watch(worker.Services);
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = account, PageSize = 5 };
        var key = report.ReportId.ToString();

        var job = await lost.PublishUntilSucceededAsync(fixture, worker, reports, report, key);

        Assert.Equal(1, job.Attempts);
        Assert.Null(job.LastError);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(10, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
        // Settled as the success it was, where it counted a failed attempt and no success, and its retry found the
        // inbox row done and was acked as a duplicate of itself.
        Assert.Equal(1, succeeded.Count);
        Assert.Equal(0, failedAttempts.Count);
        Assert.Equal(0, duplicates.Count);
        Assert.Equal(0u, await fixture.ReadyAsync($"{reports}_error"));
    }

    /// <summary>Only JobTracker.MarkSucceededAsync's statement says this.</summary>
    private const string MarkSucceeded = "progress = CASE WHEN progress IS NULL THEN NULL ELSE 100 END";

    /// <summary>Only JobTracker.RecordFailedAttemptInTransactionAsync's statement says this.</summary>
    private const string RecordFailedAttempt = "DELETE FROM inbox WHERE consumer_id = ";
}
