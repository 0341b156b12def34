using Conveyor.Contracts;
using Conveyor.Contracts.Reports;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Observability;

/// <summary>
/// <c>conveyor_jobs_attempts_failed_total</c> counts attempts that ran and failed. A lease endpoint whose start of the
/// attempt fails itself (<c>JobTracker.StartAttemptAsync</c>: the database away before the job is claimed) ran no
/// attempt, as a claim that fails in the other inboxes, and counted one failed attempt all the same.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class LeaseAttemptMetricTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_lease_endpoint_whose_attempt_cannot_start_counts_no_failed_attempt()
    {
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-no-start", PageSize = 50 };
        using var failed = WorkerMetric.AttemptsFailed(JobKinds.GenerateReport);
        // Every write of the report's job row fails, as with the database away: its attempt is never counted, nor started.
        await using var fault = await TestTrigger.CreateAsync(fixture, "lease_attempt_cannot_start", "jobs", $"""
            CREATE SEQUENCE lease_attempt_cannot_start;
            CREATE FUNCTION lease_attempt_cannot_start() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              PERFORM nextval('lease_attempt_cannot_start');
              RAISE EXCEPTION 'test: the job row cannot be written now';
            END $$;
            CREATE TRIGGER lease_attempt_cannot_start BEFORE INSERT OR UPDATE ON jobs
              FOR EACH ROW WHEN (NEW.business_key = '{report.ReportId}') EXECUTE FUNCTION lease_attempt_cannot_start();
            """);
        await fixture.DeclareAsync("generate-report_error");
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:GenerateReport:RetryLimit", "0"),
            ("Consumers:GenerateReport:RedeliveryLimit", "0")));
        failed.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        await Eventually.AssertAsync(async () => Assert.Single(await amqp.TakeAllAsync("generate-report_error")),
            () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
        Assert.True(await fault.FiredAsync() > 0, "the attempt's start did not fail");
        Assert.Equal(0, failed.Count);
    }
}
