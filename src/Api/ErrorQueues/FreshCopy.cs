using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using RabbitMQ.Client;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// The properties of a message moved back from an error queue: the same MessageId, body and
/// contract headers (so the inbox recognises a copy), without the fault and retry bookkeeping (so it
/// gets a fresh retry budget), and with a bounded history of its earlier faults.
/// </summary>
public static class FreshCopy
{
    /// <summary>Faults kept in <see cref="FaultHeaders.FaultHistory"/>; older ones drop off.</summary>
    public const int HistoryLength = 5;

    /// <summary>Characters kept of each fault message in the history.</summary>
    public const int HistoryMessageChars = 300;

    private static readonly string[] StrippedPrefixes =
    [
        "MT-Fault-", FaultHeaders.Reason, "MT-Redelivery-Count",
        "x-death", "x-first-death", "x-last-death", "x-delivery-count", "x-dotnet-pub-seq-no",
        FaultHeaders.RedeliveryAttempt, FaultHeaders.FirstFailureAt, FaultHeaders.Attempts,
        FaultHeaders.DeadLetterReason, FaultHeaders.JobKind, "Conveyor-Last-Error", "Conveyor-Lease-Deferrals",
        FaultHeaders.FaultHistory, FaultHeaders.MovedFrom, FaultHeaders.MovedBy,
    ];

    public static BasicProperties Build(IReadOnlyBasicProperties original, FaultedMessage message, string fromQueue, Guid? operationId)
    {
        var headers = new Dictionary<string, object?>(StringComparer.Ordinal);
        if (original.Headers is not null)
        {
            foreach (var (name, value) in original.Headers)
            {
                if (!StrippedPrefixes.Any(prefix => name.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)))
                {
                    headers[name] = value;
                }
            }
        }

        if (History(message) is { } history)
        {
            headers[FaultHeaders.FaultHistory] = history;
        }

        headers[FaultHeaders.MovedFrom] = fromQueue;
        if (operationId is { } id)
        {
            headers[FaultHeaders.MovedBy] = id.ToString();
        }

        // UserId is left out: the broker refuses a publish whose user-id is not the connection's user.
        // Expiration is left out: a message moved back should not vanish before it is consumed.
        return new BasicProperties
        {
            ContentType = original.ContentType,
            ContentEncoding = original.ContentEncoding,
            MessageId = original.MessageId,
            CorrelationId = original.CorrelationId,
            Type = original.Type,
            AppId = original.AppId,
            ReplyTo = original.ReplyTo,
            Priority = original.Priority,
            Timestamp = original.Timestamp,
            DeliveryMode = DeliveryModes.Persistent,
            Headers = headers,
        };
    }

    /// <summary>The earlier history plus this fault, newest last, at most <see cref="HistoryLength"/> entries; null when there is nothing to record.</summary>
    public static string? History(FaultedMessage message)
    {
        var entries = new List<JsonNode>();
        if (message.FaultHistory is { } earlier)
        {
            try
            {
                if (JsonNode.Parse(earlier) is JsonArray array)
                {
                    entries.AddRange(array.OfType<JsonObject>().Select(entry => entry.DeepClone()));
                }
            }
            catch (JsonException)
            {
                // A mangled history is dropped rather than carried along.
            }
        }

        if (message.ExceptionType is not null || message.ExceptionMessage is not null)
        {
            var text = message.ExceptionMessage ?? "";
            entries.Add(new JsonObject
            {
                ["exceptionType"] = message.ExceptionType,
                ["message"] = text.Length > HistoryMessageChars ? text[..HistoryMessageChars] : text,
                ["faultedAt"] = message.FaultedAt?.ToString("O", CultureInfo.InvariantCulture),
            });
        }

        return entries.Count == 0 ? null : new JsonArray([.. entries.TakeLast(HistoryLength)]).ToJsonString();
    }
}
