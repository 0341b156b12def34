using Conveyor.Contracts;
using Conveyor.Contracts.Webhooks;

namespace Conveyor.Api.Jobs;

/// <summary>Body of <c>POST /api/jobs/deliver-webhook</c>: <c>{ webhookId, url, eventType, payload }</c>.</summary>
internal static class DeliverWebhookRequest
{
    public static JobRequest? Read(JsonFields fields, bool allowPrivateHosts)
    {
        var webhookId = fields.RequiredId("webhookId");
        var url = fields.RequiredString("url", value => FieldRules.WebhookUrl(value, allowPrivateHosts));
        var eventType = fields.RequiredString("eventType", FieldRules.EventType);
        var payload = fields.RequiredValue("payload");

        return fields.HasErrors
            ? null
            : JobRequest.For(JobKinds.DeliverWebhook, webhookId, new DeliverWebhook
            {
                WebhookId = webhookId,
                Url = new Uri(url, UriKind.Absolute),
                EventType = eventType,
                Payload = payload,
            });
    }
}
