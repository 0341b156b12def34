using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Webhooks;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A receiver registered in <c>Webhooks:Receivers</c> gets deliveries signed with its own secrets and
/// not with the shared one, so no other receiver (each holds the shared secret) can sign a delivery it
/// accepts. Unregistered receivers keep the shared secret, or are refused when
/// <c>Webhooks:RequireRegisteredReceivers</c> is set.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookReceiverSecretTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Shared = WorkerSettings.SigningSecret;
    private const string OwnSecret = "receiver-own-signing-secret-0123";
    private const string MovingSecret = "receiver-moving-signing-secret-0123";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_registered_receiver_verifies_with_its_own_secret_only_and_an_unregistered_one_with_the_shared_secret()
    {
        await using var registered = await FakeWebhookReceiver.StartAsync();
        await using var moving = await FakeWebhookReceiver.StartAsync();
        await using var unregistered = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            // Spelt otherwise than the delivery URLs: origins compare by scheme, host and port.
            ("Webhooks:Receivers:0:Origin", $"HTTP://127.0.0.1:{registered.BaseAddress.Port}/"),
            ("Webhooks:Receivers:0:SigningSecret", OwnSecret),
            // Moving from the shared secret to its own: both sign until it has switched.
            ("Webhooks:Receivers:1:Origin", $"http://127.0.0.1:{moving.BaseAddress.Port}"),
            ("Webhooks:Receivers:1:SigningSecret", MovingSecret),
            ("Webhooks:Receivers:1:PreviousSigningSecrets:0", Shared)));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhooks = new[] { Webhook(registered), Webhook(moving), Webhook(unregistered) };

        foreach (var webhook in webhooks)
        {
            await publisher.PublishAsync(webhook);
        }

        await Eventually.AssertAsync(async () => Assert.All(await StatusesAsync(webhooks), s => Assert.Equal(JobStatus.Succeeded, s)));
        var toRegistered = Assert.Single(registered.Deliveries);
        Assert.True(Verifies(toRegistered, OwnSecret), "verifies with the receiver's own secret");
        Assert.False(Verifies(toRegistered, Shared), "verifies with the shared secret, which every unregistered receiver holds");
        Assert.False(Verifies(toRegistered, MovingSecret), "verifies with another receiver's secret");
        var toMoving = Assert.Single(moving.Deliveries);
        Assert.True(Verifies(toMoving, MovingSecret), "verifies with the receiver's new secret");
        Assert.True(Verifies(toMoving, Shared), "verifies with the shared secret it is moving from");
        Assert.False(Verifies(toMoving, OwnSecret), "verifies with another receiver's secret");
        var toUnregistered = Assert.Single(unregistered.Deliveries);
        Assert.True(Verifies(toUnregistered, Shared), "verifies with the shared secret");
        Assert.False(Verifies(toUnregistered, OwnSecret), "verifies with a registered receiver's secret");
    }

    [Fact]
    public async Task When_receivers_must_be_registered_a_delivery_to_another_origin_is_dead_lettered_before_any_request()
    {
        await using var registered = await FakeWebhookReceiver.StartAsync();
        await using var unregistered = await FakeWebhookReceiver.StartAsync();
        await fixture.DeclareAsync("deliver-webhook_error");
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:Receivers:0:Origin", $"http://127.0.0.1:{registered.BaseAddress.Port}"),
            ("Webhooks:Receivers:0:SigningSecret", OwnSecret),
            ("Webhooks:RequireRegisteredReceivers", "true"),
            ("Consumers:DeliverWebhook:RetryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var allowed = Webhook(registered);
        var refused = Webhook(unregistered);

        await publisher.PublishAsync(allowed);
        await publisher.PublishAsync(refused);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().WithoutRequestBody().SingleOrDefaultAsync(j => j.BusinessKey == refused.WebhookId.ToString());
            Assert.NotNull(job);
            Assert.Equal(JobStatus.DeadLettered, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Contains($"origin http://127.0.0.1:{unregistered.BaseAddress.Port} is not a registered receiver", job.LastError, StringComparison.Ordinal);
            Assert.Contains("Webhooks:RequireRegisteredReceivers", job.LastError, StringComparison.Ordinal);
            Assert.Equal(1u, await fixture.ReadyAsync("deliver-webhook_error"));
        });
        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, Assert.Single(await StatusesAsync(allowed))));
        Assert.True(Verifies(Assert.Single(registered.Deliveries), OwnSecret), "the registered receiver's delivery verifies with its secret");
        await fixture.AssertDrainedAsync(worker, "deliver-webhook");
        Assert.Empty(unregistered.Deliveries);
        Assert.Equal(1u, await fixture.ReadyAsync("deliver-webhook_error"));
    }

    [Fact]
    public async Task The_worker_refuses_to_start_with_a_receiver_entry_it_cannot_use_naming_the_setting()
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:Receivers:0:Origin", "https://hooks.example.com"),
            ("Webhooks:Receivers:0:SigningSecret", OwnSecret),
            ("Webhooks:Receivers:1:Origin", "https://hooks.example.com/customer-b"),
            ("Webhooks:Receivers:1:SigningSecret", "short"))));

        Assert.Contains("Webhooks:Receivers:1:Origin 'https://hooks.example.com/customer-b' has a path", refused.Message, StringComparison.Ordinal);
        Assert.Contains("Webhooks:Receivers:1:SigningSecret is required and must be at least 16 characters long", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_refused_receiver_entry_is_named_by_its_key_as_configured_not_by_its_place_among_the_entries()
    {
        // Entries 0 to 4 left out (removed from an env file, say), and one keyed by name: .NET binds them as 0 and 1.
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:Receivers:5:Origin", "https://hooks.example.com/customer-b"),
            ("Webhooks:Receivers:5:SigningSecret", OwnSecret),
            ("Webhooks:Receivers:acme:Origin", "https://acme.example.com"),
            ("Webhooks:Receivers:acme:SigningSecret", "short"))));

        // Before, "Webhooks:Receivers:0:Origin ..." and "Webhooks:Receivers:1:SigningSecret ...": settings nobody wrote.
        Assert.Contains("Webhooks:Receivers:5:Origin 'https://hooks.example.com/customer-b' has a path", refused.Message, StringComparison.Ordinal);
        Assert.Contains("Webhooks:Receivers:acme:SigningSecret is required and must be at least 16 characters long", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("Webhooks:Receivers:0", refused.Message, StringComparison.Ordinal);
    }

    private static DeliverWebhook Webhook(FakeWebhookReceiver receiver) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = receiver.Url(),
        EventType = "invoice.paid",
        Payload = JsonDocument.Parse("""{ "invoice" : 7 }""").RootElement,
    };

    private static bool Verifies(FakeWebhookReceiver.Received delivery, string secret) => WebhookSignature.Verify(
        secret,
        delivery.Headers[WebhookSignature.HeaderName],
        delivery.Headers[WebhookSender.WebhookIdHeader],
        delivery.Headers["Idempotency-Key"],
        delivery.Headers[WebhookSender.EventTypeHeader],
        delivery.Body,
        DateTimeOffset.UtcNow);

    private async Task<List<string>> StatusesAsync(params DeliverWebhook[] webhooks)
    {
        var keys = webhooks.Select(w => w.WebhookId.ToString()).ToList();
        await using var db = fixture.CreateDbContext();
        var statuses = await db.Jobs.AsNoTracking().WithoutRequestBody()
            .Where(j => keys.Contains(j.BusinessKey)).Select(j => j.Status).ToListAsync();
        Assert.Equal(webhooks.Length, statuses.Count);
        return statuses;
    }
}
