using System.Net;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Observability;

/// <summary>
/// <c>conveyor_jobs_retries_scheduled_total</c> counts the delayed redeliveries the worker stored. Two copies of one
/// command (a duplicate publish) failing at the same count fold into one stored row (<c>RedeliveryStore</c>): one
/// redelivery is scheduled, and it counted two.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class RetryMetricCountsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string WebhookExchange = "Conveyor.Contracts.Webhooks:DeliverWebhook";
    private const string WebhookUrn = "urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Two_copies_of_a_command_folded_into_one_stored_redelivery_count_one_retry_scheduled()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.InternalServerError;
        using var retries = JobCounter.RetriesScheduled(JobKinds.DeliverWebhook);
        var logs = new CapturedLogs();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:RedeliveryMaxDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:KillSwitchTripPercent", "0"),
            ("Logging:LogLevel:Conveyor.Worker.Jobs", "Information")), builder => builder.Logging.AddProvider(logs));
        await fixture.DeclareAsync("deliver-webhook_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var webhookId = Guid.NewGuid();
        var command = new { webhookId, url = receiver.Url(), eventType = "invoice.created", payload = new { invoice = 7 } };

        await producer.PublishEnvelopeAsync(WebhookExchange, WebhookUrn, command);
        await WaitForRetryScheduledAsync(webhookId, attempts: 1);
        await Eventually.AssertAsync(() => Assert.Equal(1, retries.Count));
        // The same command again, as a new message: it fails at the same count, and folds into the row stored first.
        await producer.PublishEnvelopeAsync(WebhookExchange, WebhookUrn, command);
        await WaitForRetryScheduledAsync(webhookId, attempts: 2);
        // Each copy's handling logs its redelivery right after the count, scheduled or joined: both are in once both are logged.
        await Eventually.AssertAsync(() => Assert.Equal(2, logs.Entries.Count(e =>
            e.Message.Contains(webhookId.ToString(), StringComparison.Ordinal) && e.Message.Contains("failed transiently; ", StringComparison.Ordinal))));

        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        Assert.Equal(2, receiver.Deliveries.Count);
        Assert.Equal(1, retries.Count);
    }

    private Task WaitForRetryScheduledAsync(Guid webhookId, int attempts) =>
        Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Kind == JobKinds.DeliverWebhook && j.BusinessKey == webhookId.ToString());
            Assert.Equal((JobStatus.RetryScheduled, attempts), (job.Status, job.Attempts));
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));
}
