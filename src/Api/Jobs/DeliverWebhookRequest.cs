using Conveyor.Contracts;
using Conveyor.Contracts.Webhooks;

namespace Conveyor.Api.Jobs;

/// <summary>Body of <c>POST /api/jobs/deliver-webhook</c>: <c>{ webhookId, url, eventType, payload }</c>.</summary>
internal static class DeliverWebhookRequest
{
    /// <summary>The business id: the job's unique key within its kind.</summary>
    public const string BusinessIdField = "webhookId";

    /// <summary>
    /// How deep a payload may nest objects and arrays (the payload object is level 1). Every JSON
    /// writer and reader the command meets stops at 64 levels: System.Text.Json's default, which
    /// MassTransit's serializer and the scheduled-job envelope (<see cref="ScheduledJobs"/>) keep.
    /// The payload starts at level 3 of a message envelope (envelope, command, payload), so a payload
    /// of n levels needs n + 2 of the 64; at level 4 of the fault MassTransit publishes about a failed
    /// command (envelope, fault, command, payload), n + 3. The body parser alone would let a payload
    /// reach 63 levels (the body is level 1): accepted, then never published (a 503 that no retry
    /// cures; a 500 with runAt). 32 leaves half the depth for such wrappers and is far deeper than
    /// event payloads go.
    /// </summary>
    public const int MaxPayloadDepth = 32;

    public static JobRequest? Read(JsonFields fields, bool allowPrivateHosts)
    {
        var webhookId = fields.RequiredId(BusinessIdField);
        var url = fields.RequiredString("url", value => FieldRules.WebhookUrl(value, allowPrivateHosts));
        var eventType = fields.RequiredString("eventType", FieldRules.EventType);
        var payload = fields.RequiredValue("payload", MaxPayloadDepth);

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
