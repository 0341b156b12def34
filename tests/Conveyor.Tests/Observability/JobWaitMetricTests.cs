using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Observability;

/// <summary>
/// <c>conveyor.jobs.wait</c> counts a job's time in its queue once, at its first attempt (<see cref="WorkerMetric.Waits"/>). Alone: one
/// case reads the worker's /metrics, which shows every host's meters (<see cref="ProcessWide"/>).
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class JobWaitMetricTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";

    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <param name="retryLimit">In-memory retries before a delayed redelivery.</param>
    /// <param name="failures">Attempts that fail before one succeeds.</param>
    [Theory]
    [InlineData(1, 3)] // two attempts in memory, then two delayed redeliveries
    [InlineData(0, 2)] // delayed redeliveries only
    [InlineData(2, 2)] // in-memory retries only
    public async Task Only_a_jobs_first_attempt_records_its_wait_not_its_retries_or_redeliveries(int retryLimit, int failures)
    {
        using var waits = WorkerMetric.Waits();
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailNext(failures, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:RetryLimit", retryLimit.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            ("Consumers:ChargePayment:RetryMinIntervalMilliseconds", "50"),
            ("Consumers:ChargePayment:RedeliveryLimit", "3"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "200")));
        waits.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var (retried, plain) = (Payment(), Payment());

        await publisher.PublishAsync(retried);
        Assert.Equal(failures + 1, (await WaitForSuccessAsync(retried.PaymentId)).Attempts);
        await publisher.PublishAsync(plain);
        Assert.Equal(1, (await WaitForSuccessAsync(plain.PaymentId)).Attempts);

        if (failures > retryLimit)
        {
            // The redeliveries' lateness, in second-scale buckets (OpenTelemetry's defaults, 0, 5, 10, ..., are made for milliseconds).
            var metrics = await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
            Assert.Contains(metrics.Split('\n'), line => line.StartsWith("conveyor_redelivery_lateness_seconds_bucket{", StringComparison.Ordinal)
                && line.Contains("le=\"0.05\"", StringComparison.Ordinal));
        }

        // Two first attempts, whatever came between.
        var recorded = waits.Recorded;
        Assert.Equal(2, recorded.Length);
        Assert.All(recorded, wait =>
        {
            Assert.Equal("charge-payment", wait.Tag);
            Assert.True(wait.Value >= 0);
        });
    }

    [Fact]
    public async Task A_copy_moved_back_from_the_error_queue_records_no_wait()
    {
        using var waits = WorkerMetric.Waits();
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        waits.Watch(worker.Services);
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var (moved, fresh) = (Payment(), Payment());

        // What the move publishes: the command with the queue it came back from (ErrorQueueApiTests check the move sets it).
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, moved, headers: new Dictionary<string, string>
        {
            [Conveyor.Contracts.JobHeaders.MovedFrom] = "charge-payment_error",
        });
        await WaitForSuccessAsync(moved.PaymentId);
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, fresh);
        await WaitForSuccessAsync(fresh.PaymentId);

        Assert.Single(waits.Recorded);
    }

    private async Task<Job> WaitForSuccessAsync(Guid paymentId)
    {
        Job? job = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == paymentId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
        });
        return job!;
    }

    private static ChargePayment Payment() => new()
    {
        PaymentId = Guid.NewGuid(),
        AccountId = "acct-wait-metric",
        AmountMinor = 300,
        Currency = "EUR",
    };
}
