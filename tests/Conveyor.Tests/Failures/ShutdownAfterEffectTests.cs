using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
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
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "order.shipped",
            Payload = JsonSerializer.SerializeToElement(new { orderId = 7 }),
        };
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
        var settings = WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:InboxBatchSize", "1"),
            ("Shutdown:ConsumerStopTimeoutSeconds", "1"),
            ("Shutdown:BusStopTimeoutSeconds", "8"),
            ("Shutdown:HostShutdownTimeoutSeconds", "12"));
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

        // The broker may have the message back (the channel can close before its ack): the next worker
        // finds it done in the inbox and does not deliver it again.
        var second = await fixture.StartWorkerAsync(settings);
        await fixture.AssertDrainedAsync(second, "deliver-webhook");
        await second.DisposeAsync();
        Assert.Single(receiver.Deliveries);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, (await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == webhook.WebhookId.ToString())).Attempts);
    }
}
