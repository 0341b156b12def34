using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A shutdown that comes after the consumer's effect happened (the receiver answered 2xx) but while its
/// record is still being written: the record is written and committed, not rolled back, or the next
/// delivery would apply the effect again. One transaction per message (<c>InboxBatchSize</c> 1), the path
/// whose writes took the consumer's token.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class ShutdownAfterEffectTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_webhook_delivered_just_before_the_consumer_stop_timeout_is_recorded_once_and_never_sent_again()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        var webhook = Webhook(receiver);
        // The delivery's record is written slowly, once: longer than the consumer stop timeout below.
        await using var slowRecord = await TestTrigger.CreateAsync(fixture, "test_slow_delivery_record", "webhook_deliveries", """
            CREATE SEQUENCE test_slow_delivery_record;
            CREATE FUNCTION test_slow_delivery_record() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('test_slow_delivery_record') = 1 THEN
                PERFORM pg_sleep(4);
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER test_slow_delivery_record BEFORE INSERT ON webhook_deliveries
              FOR EACH ROW EXECUTE FUNCTION test_slow_delivery_record();
            """);
        var settings = Settings();
        var first = await fixture.StartWorkerAsync(settings);
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(webhook);
        }

        await Eventually.AssertAsync(async () =>
        {
            Assert.Single(receiver.Deliveries);
            Assert.Equal(1, await slowRecord.FiredAsync());
        });

        // As on SIGTERM while the record is being written: the consumer's token fires a second in.
        await first.DisposeAsync();

        await using (var db = fixture.CreateDbContext())
        {
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == webhook.WebhookId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Equal(1, await db.WebhookDeliveries.CountAsync(d => d.WebhookId == webhook.WebhookId));
        }

        // The broker may have the message back (the channel can close before its ack), and a copy is
        // published again besides, so that the next worker surely meets one: it finds the webhook done
        // in the inbox and does not deliver it again.
        var second = await fixture.StartWorkerAsync(settings);
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(webhook);
        }

        await fixture.AssertDrainedAsync(second, "deliver-webhook");
        await second.DisposeAsync();
        Assert.Single(receiver.Deliveries);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, (await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == webhook.WebhookId.ToString())).Attempts);
    }

    [Fact]
    public async Task A_webhook_cut_off_by_a_shutdown_while_its_receiver_answers_keeps_its_attempt_and_cannot_be_cancelled()
    {
        // The receiver may have acted on the request before the worker stopped waiting for its answer:
        // the attempt stays counted, with its error, so the job reads as started and a cancel is refused.
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerAfter = TimeSpan.FromSeconds(60);
        var webhook = Webhook(receiver);
        var key = webhook.WebhookId.ToString();
        var settings = Settings();
        var first = await fixture.StartWorkerAsync(settings);
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(webhook);
        }

        await Eventually.AssertAsync(() => Assert.Single(receiver.Deliveries));
        await first.DisposeAsync();

        Guid jobId;
        await using (var db = fixture.CreateDbContext())
        {
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
            Assert.Equal(JobStatus.Queued, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Contains("shutdown", job.LastError, StringComparison.OrdinalIgnoreCase);
            jobId = job.Id;
        }

        await using (var api = await fixture.StartApiAsync())
        {
            using var cancel = await api.Client.CancelJobAsync(jobId);
            await cancel.AssertProblemAsync(StatusCodes.Status409Conflict);
        }

        receiver.AnswerAfter = null;
        var second = await fixture.StartWorkerAsync(settings);
        var done = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(second, "deliver-webhook");
        await second.DisposeAsync();
        Assert.Equal(2, done.Attempts);
        Assert.Equal(2, receiver.Deliveries.Count);
    }

    private static DeliverWebhook Webhook(FakeWebhookReceiver receiver) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = receiver.Url(),
        EventType = "order.shipped",
        Payload = JsonSerializer.SerializeToElement(new { orderId = 7 }),
    };

    private static Dictionary<string, string?> Settings() => WorkerSettings.With().Override(
        ("Consumers:DeliverWebhook:InboxBatchSize", "1"),
        ("Shutdown:ConsumerStopTimeoutSeconds", "1"),
        ("Shutdown:BusStopTimeoutSeconds", "8"),
        ("Shutdown:HostShutdownTimeoutSeconds", "12"));
}
