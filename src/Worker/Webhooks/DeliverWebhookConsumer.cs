using System.Text;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage;
using Conveyor.Storage.Webhooks;
using Conveyor.Worker.Failures;
using MassTransit;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// Delivers the payload and records the delivery in the inbox transaction. The receiver gets the
/// WebhookId as its idempotency key, since an HTTP call cannot be rolled back.
/// </summary>
public sealed class DeliverWebhookConsumer(WebhookSender sender, ConveyorDbContext db, TimeProvider time)
    : IConsumer<DeliverWebhook>
{
    public async Task Consume(ConsumeContext<DeliverWebhook> context)
    {
        var webhook = context.Message;
        Validate(webhook);

        var body = Encoding.UTF8.GetBytes(webhook.Payload.GetRawText());
        var result = await sender.SendAsync(webhook.WebhookId, webhook.Url, webhook.EventType, body, context.CancellationToken);

        db.WebhookDeliveries.Add(new WebhookDelivery
        {
            WebhookId = webhook.WebhookId,
            Url = webhook.Url.ToString(),
            EventType = webhook.EventType,
            StatusCode = result.StatusCode,
            DeliveredAt = time.GetUtcNow(),
        });
        // Staged, not saved: the inbox saves it in its transaction (and applies it with its batch).
    }

    private static void Validate(DeliverWebhook webhook)
    {
        if (webhook.WebhookId == Guid.Empty)
        {
            throw new PermanentFailureException("WebhookId is empty");
        }

        if (webhook.Url is not { IsAbsoluteUri: true } url || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps))
        {
            throw new PermanentFailureException($"Url must be an absolute http or https URL, was '{webhook.Url}'");
        }

        if (string.IsNullOrWhiteSpace(webhook.EventType) || webhook.EventType.Length > 200)
        {
            throw new PermanentFailureException("EventType must be 1 to 200 characters");
        }

        if (webhook.Payload.ValueKind is JsonValueKind.Undefined or JsonValueKind.Null)
        {
            throw new PermanentFailureException("Payload is missing");
        }
    }
}
