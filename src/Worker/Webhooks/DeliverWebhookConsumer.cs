using System.Text;
using Conveyor.Contracts;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage;
using Conveyor.Storage.Webhooks;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Jobs;
using MassTransit;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// Delivers the payload and records the delivery in the inbox transaction. The receiver gets the
/// WebhookId as its idempotency key, since an HTTP call cannot be rolled back (a corrected command under
/// a dead-lettered webhook's id adds its fingerprint: <see cref="RemoteIdempotencyKeys"/>).
/// </summary>
public sealed class DeliverWebhookConsumer(WebhookSender sender, RemoteIdempotencyKeys keys, ConveyorDbContext db, TimeProvider time)
    : IConsumer<DeliverWebhook>
{
    public async Task Consume(ConsumeContext<DeliverWebhook> context)
    {
        var webhook = context.Message;
        PermanentFailureException.ThrowIfInvalid(context, webhook.Validate());

        var body = Encoding.UTF8.GetBytes(webhook.Payload.GetRawText());
        var idempotencyKey = await keys.ForAsync(context, JobKinds.DeliverWebhook, webhook.WebhookId.ToString());
        var result = await sender.SendAsync(webhook.WebhookId, idempotencyKey, webhook.Url, webhook.EventType, body, context.CancellationToken);

        db.WebhookDeliveries.Add(new WebhookDelivery
        {
            WebhookId = webhook.WebhookId,
            // As sent, which the contract limits to the column's length; the canonical form can be
            // longer (a '/' before a query with no path) and would be cut short to fit.
            Url = webhook.Url.OriginalString,
            EventType = webhook.EventType,
            StatusCode = result.StatusCode,
            DeliveredAt = time.GetUtcNow(),
        });
        // Staged, not saved: the inbox saves it in its transaction (and applies it with its batch).
    }
}
