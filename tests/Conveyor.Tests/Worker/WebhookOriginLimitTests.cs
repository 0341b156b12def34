using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Worker;

/// <summary>
/// One receiver that answers slowly must not hold back every other receiver's webhooks: the worker
/// delivers to one origin at most <c>Webhooks:MaxConcurrentPerOrigin</c> at a time, and a delivery
/// whose origin is at that limit is set aside (stored, published again a moment later) instead of
/// holding one of the endpoint's slots while it waits, without spending an attempt.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class WebhookOriginLimitTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int SlowWebhooks = 6;
    private const int PerOrigin = 2;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_receiver_holding_its_origins_deliveries_does_not_hold_back_another_receivers_webhook()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        await using var fast = await FakeWebhookReceiver.StartAsync();
        var settings = WorkerSettings.With().Override(
            // Four slots: without a limit per origin, the slow receiver's six webhooks take them all.
            ("Consumers:DeliverWebhook:ConcurrentMessageLimit", "4"),
            ("Consumers:DeliverWebhook:PrefetchCount", "4"),
            ("Webhooks:MaxConcurrentPerOrigin", PerOrigin.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            // Held open well past the test's waits: a delivery timing out would be retried, not the point here.
            ("Webhooks:TimeoutSeconds", "60"));
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await fixture.DeclareAsync("deliver-webhook_error");

        var held = Enumerable.Range(0, SlowWebhooks).Select(i => Webhook(slow, i)).ToList();
        foreach (var webhook in held)
        {
            await publisher.PublishAsync(webhook);
        }

        await Eventually.AssertAsync(() => Assert.Equal(PerOrigin, slow.Deliveries.Count));
        var other = Webhook(fast, 100);
        await publisher.PublishAsync(other);

        // Delivered and committed while the slow receiver still holds its origin's deliveries open.
        await fixture.WaitForJobAsync(other.WebhookId, JobStatus.Succeeded);
        Assert.Single(fast.Deliveries);
        Assert.Equal(PerOrigin, slow.Deliveries.Count);

        // Each set-aside delivery comes back and is delivered once, no attempt spent on waiting.
        release.SetResult();
        foreach (var webhook in held)
        {
            var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
            Assert.Null(job.LastError);
        }

        var keys = slow.Deliveries.Select(d => d.Headers["Idempotency-Key"]).ToList();
        Assert.Equal(held.Select(w => w.WebhookId.ToString()).Order(), keys.Order());
        await using var db = fixture.CreateDbContext();
        Assert.Equal(SlowWebhooks + 1, await db.WebhookDeliveries.CountAsync());
        Assert.Equal(0u, await fixture.ReadyAsync("deliver-webhook_error"));
    }

    [Fact]
    public async Task A_delivery_set_aside_as_often_as_allowed_goes_ahead_over_its_origins_limit()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        var settings = WorkerSettings.With().Override(
            ("Webhooks:MaxConcurrentPerOrigin", "1"),
            ("Webhooks:MaxOriginDeferrals", "2"),
            ("Webhooks:TimeoutSeconds", "60"),
            ("Logging:LogLevel:Conveyor.Worker.Jobs", "Debug"));
        var logs = new CapturedLogs();
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        var first = Webhook(slow, 1);
        await publisher.PublishAsync(first);
        await Eventually.AssertAsync(() => Assert.Single(slow.Deliveries));
        var second = Webhook(slow, 2);
        await publisher.PublishAsync(second);

        // Set aside twice while the first is held, then delivered beside it: never put off without end.
        await Eventually.AssertAsync(() => Assert.Equal(2, slow.Deliveries.Count));
        release.SetResult();
        await fixture.WaitForJobAsync(first.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        await fixture.WaitForJobAsync(second.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        Assert.Equal(2, logs.Of(LogLevel.Debug, "Conveyor.Worker.Jobs").Count(e => e.Message.Contains($"webhook {second.WebhookId}: ", StringComparison.Ordinal)
            && e.Message.Contains("set aside", StringComparison.Ordinal)));
        Assert.DoesNotContain(logs.Of(LogLevel.Debug, "Conveyor.Worker.Jobs"), e => e.Message.Contains($"webhook {first.WebhookId}: ", StringComparison.Ordinal));
    }

    /// <summary>
    /// With the shipped settings (16 slots, 4 per origin): each of the slow origin's deliveries, arriving one at a
    /// time, did sit alone in an inbox batch that commits when its consumer ends, and InboxConcurrentBatches (4) of
    /// them left no batch for the other receiver's webhook. Webhooks now take one inbox transaction each (ADR 0004).
    /// </summary>
    [Fact]
    public async Task A_receiver_holding_its_origins_deliveries_in_separate_inbox_batches_does_not_hold_back_another_receivers_webhook()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        await using var fast = await FakeWebhookReceiver.StartAsync();
        // The defaults: 16 slots, 4 per origin, 4 inbox batches in flight; held open past the wait below.
        var settings = WorkerSettings.With().Override(("Webhooks:TimeoutSeconds", "120"), ("Consumers:DeliverWebhook:PrefetchCount", "16"));
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        // One at a time: each held delivery is the only member of its inbox batch, which waits for it.
        for (var i = 0; i < 4; i++)
        {
            await publisher.PublishAsync(Webhook(slow, i));
            await Eventually.AssertAsync(() => Assert.Equal(i + 1, slow.Deliveries.Count));
        }

        var other = Webhook(fast, 100);
        await publisher.PublishAsync(other);
        await Eventually.AssertAsync(() => Assert.Single(fast.Deliveries));
        Assert.Equal(4, slow.Deliveries.Count);
        release.SetResult();
    }

    private static DeliverWebhook Webhook(FakeWebhookReceiver receiver, int n) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = receiver.Url(),
        EventType = "invoice.created",
        Payload = JsonDocument.Parse($$"""{"invoice":{{n}}}""").RootElement,
    };
}
