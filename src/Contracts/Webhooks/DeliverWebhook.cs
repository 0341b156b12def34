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

    /// <summary>Printable ASCII with no space at either end, such as <c>order.paid</c> (<see cref="ContractRules.EventType"/>): it is sent as the <c>Conveyor-Event-Type</c> header.</summary>
    public required string EventType { get; init; }

    /// <summary>Any JSON value; sent as the request body verbatim, as published (the Api puts each object's members in name order).</summary>
    public required JsonElement Payload { get; init; }

    /// <summary>What breaks the rules of <see cref="ContractRules"/>; empty when the command is valid.</summary>
    public IReadOnlyList<ContractViolation> Validate() => ContractViolation.Collect(
        ("webhookId", ContractRules.Id(WebhookId)),
        ("url", Url is { IsAbsoluteUri: true } ? ContractRules.WebhookUrl(Url.OriginalString) : "Must be an absolute http or https URL."),
        ("eventType", ContractRules.EventType(EventType)),
        ("payload", ContractRules.Payload(Payload)));
}
