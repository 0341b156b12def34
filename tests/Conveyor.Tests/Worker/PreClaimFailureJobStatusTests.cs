using Conveyor.Contracts;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A delivery that fails before it claims its job (its deferral cannot be stored, a filter refuses it)
/// has no attempt of its own: it must not rewrite the status of a job that another delivery is running
/// or waits to retry.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class PreClaimFailureJobStatusTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_copy_whose_deferral_fails_leaves_the_report_another_worker_runs_running()
    {
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-pre-claim", PageSize = 50 };
        var key = report.ReportId.ToString();
        // Another worker holds the report's lease and runs its first attempt.
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
                INSERT INTO inbox (consumer_id, message_key, received_at, status, lease_owner, lease_expires_at)
                VALUES ('generate-report', {key}, now(), {InboxStatus.Processing}, 'other-worker', now() + interval '10 minutes')
                """));
            db.Jobs.Add(new Job
            {
                Id = Guid.CreateVersion7(), Kind = JobKinds.GenerateReport, BusinessKey = key, Status = JobStatus.Running,
                Attempts = 1, Progress = 40, CreatedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        // Our copy's deferral cannot be stored (a serialization failure each time); with no retries
        // left it goes to _error.
        await using var fault = await TestTrigger.CreateAsync(fixture, "pre_claim_defer_fails", "scheduled_messages", """
            CREATE SEQUENCE pre_claim_defer_fails;
            CREATE FUNCTION pre_claim_defer_fails() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              PERFORM nextval('pre_claim_defer_fails');
              RAISE EXCEPTION 'test: the deferral cannot be stored now' USING ERRCODE = '40001';
            END $$;
            CREATE TRIGGER pre_claim_defer_fails BEFORE INSERT ON scheduled_messages
              FOR EACH ROW WHEN (NEW.dedupe_key LIKE '%:deferred:%') EXECUTE FUNCTION pre_claim_defer_fails();
            """);
        await fixture.DeclareAsync("generate-report_error");
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:GenerateReport:RetryLimit", "0"),
            ("Consumers:GenerateReport:RedeliveryLimit", "0")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        await Eventually.AssertAsync(async () => Assert.Single(await amqp.TakeAllAsync("generate-report_error")),
            () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
        Assert.True(await fault.FiredAsync() > 0, "no deferral failed");
        // Before, the running job read dead-lettered, finished, with our copy's error.
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((JobStatus.Running, 1, 40, (string?)null, (DateTimeOffset?)null), (job.Status, job.Attempts, job.Progress, job.LastError, job.FinishedAt));
    }

    [Fact]
    public async Task A_copy_refused_for_its_headers_leaves_a_charge_waiting_for_its_retry_retry_scheduled()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        var payment = Guid.NewGuid();
        var nextAttemptAt = DateTimeOffset.UtcNow.AddMinutes(5);
        // The charge failed once and waits for its stored redelivery.
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.Add(new Job
            {
                Id = Guid.CreateVersion7(), Kind = JobKinds.ChargePayment, BusinessKey = payment.ToString(), Status = JobStatus.RetryScheduled,
                Attempts = 1, LastError = "TransientFailureException: the gateway answered 503", NextAttemptAt = nextAttemptAt,
                CreatedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        await PublishOversizedCopyAsync(producer, payment);

        await Eventually.AssertAsync(async () => Assert.Single(await producer.TakeAllAsync("charge-payment_error")),
            () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
        // Before, the job read dead-lettered (and could be taken over by other content, ADR 0011) while
        // its redelivery was still stored.
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == payment.ToString());
        Assert.Equal((JobStatus.RetryScheduled, 1, (DateTimeOffset?)null), (job.Status, job.Attempts, job.FinishedAt));
        Assert.StartsWith("TransientFailureException", job.LastError, StringComparison.Ordinal);
    }

    /// <param name="retryDue">
    /// The job waits for a redelivery that was due a minute ago (the refused copy is likely that
    /// redelivery), rather than being queued.
    /// </param>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_charge_whose_only_message_is_refused_for_its_headers_is_dead_lettered(bool retryDue)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        var payment = Guid.NewGuid();
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.Add(new Job
            {
                Id = Guid.CreateVersion7(), Kind = JobKinds.ChargePayment, BusinessKey = payment.ToString(),
                Status = retryDue ? JobStatus.RetryScheduled : JobStatus.Queued, Attempts = retryDue ? 1 : 0,
                NextAttemptAt = retryDue ? DateTimeOffset.UtcNow.AddMinutes(-1) : null,
                CreatedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        await PublishOversizedCopyAsync(producer, payment);

        // Nothing else will run it: the job says so instead of reading queued for ever.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.DeadLettered, (await db.Jobs.SingleAsync(j => j.BusinessKey == payment.ToString())).Status);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
    }

    /// <summary>A copy of the charge over MaxHeaderBytes (64 KiB): refused before any claim.</summary>
    private static Task PublishOversizedCopyAsync(RawAmqpProducer producer, Guid payment) =>
        producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = payment, accountId = "acct-padded", amountMinor = 1250, currency = "EUR" },
            headers: new Dictionary<string, string> { ["X-Pad"] = new string('p', 70_000) });
}
