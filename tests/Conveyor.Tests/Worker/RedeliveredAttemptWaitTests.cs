using System.Globalization;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Contracts.Reports;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>
/// <c>conveyor.jobs.wait</c> measures a job's wait until its first attempt, once. A message the broker
/// hands out again after an attempt started (here: a shutdown cut the attempt off and returned it) carries
/// none of the redelivery headers, so only the job's count of attempts tells that it is no first attempt.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class RedeliveredAttemptWaitTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <param name="inboxBatchSize">1: one transaction per message; more: the batched inbox.</param>
    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_webhook_handed_out_again_after_a_shutdown_cut_its_attempt_records_its_wait_once(int inboxBatchSize)
    {
        using var waits = WorkerMetric.Waits();
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerAfter = TimeSpan.FromSeconds(60);
        var settings = ShutdownSettings().Override(
            ("Consumers:DeliverWebhook:InboxBatchSize", inboxBatchSize.ToString(CultureInfo.InvariantCulture)),
            ("Webhooks:TimeoutSeconds", "30"));
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "order.shipped",
            Payload = JsonSerializer.SerializeToElement(new { orderId = 7 }),
        };

        var first = await fixture.StartWorkerAsync(settings);
        waits.Watch(first.Services);
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(webhook);
        }

        // The attempt started (its request reached the receiver); a shutdown cuts it off, and the broker has the message back.
        await Eventually.AssertAsync(() => Assert.Single(receiver.Deliveries));
        await first.DisposeAsync();
        receiver.AnswerAfter = null;
        await using var second = await fixture.StartWorkerAsync(settings);
        waits.Watch(second.Services);

        var done = await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.Succeeded);
        Assert.Equal(2, done.Attempts);
        Assert.Equal(JobKinds.DeliverWebhook, Assert.Single(waits.Recorded).Tag);
    }

    [Fact]
    public async Task A_report_handed_out_again_after_a_shutdown_cut_its_leased_run_records_its_wait_once()
    {
        using var waits = WorkerMetric.Waits();
        await fixture.SeedLedgerAsync("acct-wait-redelivered", 40);

        var settings = ShutdownSettings().Override(("Reports:PageDelayMilliseconds", "250"));
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-wait-redelivered", PageSize = 5 };
        var first = await fixture.StartWorkerAsync(settings);
        waits.Watch(first.Services);
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(report);
        }

        // The run started (its lease and attempt committed); a shutdown cuts it off, and the broker has the message back.
        await Eventually.AssertAsync(async () =>
        {
            var job = await fixture.WaitForJobAsync(report.ReportId, JobStatus.Running);
            Assert.True(job.Progress > 0, "no progress yet");
        });
        await first.DisposeAsync();
        settings["Reports:PageDelayMilliseconds"] = "0";
        await using var second = await fixture.StartWorkerAsync(settings);
        waits.Watch(second.Services);

        var done = await fixture.WaitForJobAsync(report.ReportId, JobStatus.Succeeded);
        Assert.Equal(2, done.Attempts);
        Assert.Equal(JobKinds.GenerateReport, Assert.Single(waits.Recorded).Tag);
    }

    /// <summary>A shutdown that stops a running consumer a second in, well before the host gives up.</summary>
    private static Dictionary<string, string?> ShutdownSettings() => WorkerSettings.With().Override(
        ("Shutdown:ConsumerStopTimeoutSeconds", "1"),
        ("Shutdown:BusStopTimeoutSeconds", "8"),
        ("Shutdown:HostShutdownTimeoutSeconds", "12"));
}
