namespace Conveyor.Storage.Webhooks;

/// <summary>A webhook the receiver acknowledged with a 2xx.</summary>
public sealed class WebhookDelivery
{
    public Guid WebhookId { get; set; }

    public required string Url { get; set; }

    public required string EventType { get; set; }

    public int StatusCode { get; set; }

    public DateTimeOffset DeliveredAt { get; set; }
}
