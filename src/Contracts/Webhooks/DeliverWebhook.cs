using System.Text.Json;

namespace Conveyor.Contracts.Webhooks;

/// <summary>
/// POST <see cref="Payload"/> to a customer's URL, signed with HMAC-SHA256.
/// <see cref="WebhookId"/> is the business idempotency key and is sent to the receiver.
/// </summary>
public sealed record DeliverWebhook
{
    public required Guid WebhookId { get; init; }

    /// <summary>Absolute http or https URL.</summary>
    public required Uri Url { get; init; }

    public required string EventType { get; init; }

    /// <summary>Any JSON value; sent as the request body verbatim.</summary>
    public required JsonElement Payload { get; init; }
}
