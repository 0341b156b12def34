using Conveyor.Contracts;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage;

namespace Conveyor.Api.Jobs;

/// <summary>Body of <c>POST /api/jobs/deliver-webhook</c>: <c>{ webhookId, url, eventType, payload }</c>.</summary>
internal static class DeliverWebhookRequest
{
    /// <summary>The business id: the job's unique key within its kind.</summary>
    public const string BusinessIdField = "webhookId";

    public static JobRequest? Read(JsonFields fields, WebhookUrlRules webhookUrls)
    {
        var webhookId = fields.RequiredId(BusinessIdField);
        var url = fields.RequiredString("url", value => FieldRules.WebhookUrl(value, webhookUrls));
        var eventType = fields.RequiredString("eventType", FieldRules.EventType);
        var payload = fields.RequiredValue("payload", ContractRules.MaxPayloadDepth);

        if (fields.HasErrors)
        {
            return null;
        }

        var command = new DeliverWebhook
        {
            WebhookId = webhookId,
            Url = new Uri(url, UriKind.Absolute),
            EventType = eventType,
            Payload = payload,
        };

        // Published with the payload's object members in name order, so that a worker from before
        // fingerprints took that order (ADR 0011, amendment), which fingerprints members as they arrive,
        // takes the job row's fingerprint for its own during a rolling deploy instead of a conflict.
        return JobRequest.For(JobKinds.DeliverWebhook, webhookId, command with { Payload = PayloadFingerprint.InNameOrder(payload) }, command);
    }
}
