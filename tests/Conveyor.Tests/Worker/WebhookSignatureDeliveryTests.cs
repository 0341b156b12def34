using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Webhooks;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A delivered webhook verifies as the README documents it, from what its receiver got: the
/// <c>Conveyor-Signature</c>, <c>Conveyor-Webhook-Id</c> and <c>Conveyor-Event-Type</c> headers and the
/// body. HTTP drops spaces at either end of a header value, so an event type with one was received
/// as another than the signature covers: every delivery of it failed verification at its receiver.
/// While a signing secret is rotated out, receivers holding either secret verify every delivery.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookSignatureDeliveryTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_delivered_webhook_verifies_with_the_headers_and_body_its_receiver_got()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver, "Order Paid/v2 (EU)");

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, await StatusAsync(webhook)));
        var delivery = Assert.Single(receiver.Deliveries);
        Assert.Equal(webhook.EventType, delivery.Headers[WebhookSender.EventTypeHeader]);
        Assert.True(Verifies(delivery), "the signature verifies with what the receiver got");
    }

    [Fact]
    public async Task A_delivery_sent_again_under_a_fresh_idempotency_key_does_not_verify()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver, "order.paid");

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, await StatusAsync(webhook)));
        var delivery = Assert.Single(receiver.Deliveries);
        Assert.True(Verifies(delivery), "the signature verifies with what the receiver got");
        // A receiver deduplicates by the Idempotency-Key (a corrected webhook has one of its own under the
        // same id, ADR 0011): a captured delivery replayed under a fresh key would be applied again.
        var replayed = delivery with
        {
            Headers = new Dictionary<string, string>(delivery.Headers, StringComparer.OrdinalIgnoreCase) { ["Idempotency-Key"] = $"{webhook.WebhookId}:replayed" },
        };
        Assert.False(Verifies(replayed), "a delivery replayed under a fresh Idempotency-Key verifies");
    }

    [Fact]
    public async Task While_a_signing_secret_is_rotated_out_a_delivery_verifies_with_the_old_secret_and_with_the_new()
    {
        const string OldSecret = WorkerSettings.SigningSecret;
        const string NewSecret = "rotated-signing-secret-9876543210";
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:SigningSecret", NewSecret), ("Webhooks:PreviousSigningSecrets:0", OldSecret)));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver, "order.paid");

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, await StatusAsync(webhook)));
        var delivery = Assert.Single(receiver.Deliveries);
        // A receiver not yet given the new secret, and one that already has it.
        Assert.True(Verifies(delivery, OldSecret), "verifies with the secret being rotated out");
        Assert.True(Verifies(delivery, NewSecret), "verifies with the new secret");
        Assert.False(Verifies(delivery, "some-other-secret-0123456789"), "verifies with a secret never configured");
    }

    [Theory]
    [InlineData("order.paid ")]
    [InlineData(" order.paid")]
    public async Task A_webhook_whose_event_type_begins_or_ends_with_a_space_is_dead_lettered_with_the_reason_before_any_request(string eventType)
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver, eventType);

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().WithoutRequestBody().SingleOrDefaultAsync(j => j.BusinessKey == webhook.WebhookId.ToString());
            Assert.NotNull(job);
            Assert.True(job.Status is JobStatus.DeadLettered or JobStatus.Succeeded, job.Status);
            // Had it been delivered, its receiver could not have verified it.
            Assert.All(receiver.Deliveries, delivery => Assert.True(Verifies(delivery), "a delivery its receiver cannot verify"));
            Assert.Equal(JobStatus.DeadLettered, job.Status);
            Assert.Contains("eventType: Must not begin or end with a space", job.LastError, StringComparison.Ordinal);
        });
        Assert.Empty(receiver.Deliveries);
    }

    private static DeliverWebhook Webhook(FakeWebhookReceiver receiver, string eventType) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = receiver.Url(),
        EventType = eventType,
        Payload = JsonDocument.Parse("""{ "invoice" : 7 }""").RootElement,
    };

    private static bool Verifies(FakeWebhookReceiver.Received delivery, string secret = WorkerSettings.SigningSecret) => WebhookSignature.Verify(
        secret,
        delivery.Headers[WebhookSignature.HeaderName],
        delivery.Headers[WebhookSender.WebhookIdHeader],
        delivery.Headers["Idempotency-Key"],
        delivery.Headers[WebhookSender.EventTypeHeader],
        delivery.Body,
        DateTimeOffset.UtcNow);

    private async Task<string?> StatusAsync(DeliverWebhook webhook)
    {
        await using var db = fixture.CreateDbContext();
        return await db.Jobs.AsNoTracking().WithoutRequestBody()
            .Where(j => j.BusinessKey == webhook.WebhookId.ToString()).Select(j => j.Status).SingleOrDefaultAsync();
    }
}
