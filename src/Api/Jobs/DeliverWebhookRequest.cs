using Conveyor.Contracts;
using Conveyor.Contracts.Webhooks;

namespace Conveyor.Api.Jobs;

/// <summary>Body of <c>POST /api/jobs/deliver-webhook</c>: <c>{ webhookId, url, eventType, payload }</c>.</summary>
internal static class DeliverWebhookRequest
{
    /// <summary>The business id: the job's unique key within its kind.</summary>
    public const string BusinessIdField = "webhookId";

    public static JobRequest? Read(JsonFields fields, bool allowPrivateHosts)
    {
        var webhookId = fields.RequiredId(BusinessIdField);
        var url = fields.RequiredString("url", value => FieldRules.WebhookUrl(value, allowPrivateHosts));
        var eventType = fields.RequiredString("eventType", FieldRules.EventType);
        var payload = fields.RequiredValue("payload", ContractRules.MaxPayloadDepth);

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
