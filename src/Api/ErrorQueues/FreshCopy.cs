using System.Buffers;
using System.Globalization;
using System.Text;
using System.Text.Json;
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

    /// <summary>Characters kept of each exception type in the history.</summary>
    public const int HistoryTypeChars = 200;

    private static readonly string[] StrippedPrefixes =
    [
        // MT-Host-*: the host that moved the message to _error, written with the fault headers.
        "MT-Fault-", "MT-Host-", FaultHeaders.Reason, "MT-Redelivery-Count",
        "x-death", "x-first-death", "x-last-death", "x-delivery-count", "x-dotnet-pub-seq-no",
        FaultHeaders.RedeliveryAttempt, FaultHeaders.FirstFailureAt, FaultHeaders.Attempts,
        FaultHeaders.DeadLetterReason, FaultHeaders.JobKind, "Conveyor-Last-Error", "Conveyor-Lease-Deferrals", "Conveyor-Origin-Deferrals", "Conveyor-Redelivery-Seal",
        FaultHeaders.FaultHistory, FaultHeaders.MovedFrom, FaultHeaders.MovedBy,
    ];

    public static BasicProperties Build(IReadOnlyBasicProperties original, FaultedMessage message, string fromQueue, Guid? operationId)
    {
        // Room for the headers added here and the publish sequence number the walker adds.
        var headers = new Dictionary<string, object?>((original.Headers?.Count ?? 0) + 4, StringComparer.Ordinal);
        if (original.Headers is not null)
        {
            foreach (var (name, value) in original.Headers)
            {
                if (!IsStripped(name))
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

    /// <summary>
    /// The earlier history plus this fault, newest last, at most <see cref="HistoryLength"/> entries and
    /// <see cref="Contracts.JobHeaders.MaxFaultHistoryBytes"/> bytes (the oldest go first; an earlier entry is
    /// carried as it came, so one written by someone else may be large); null when there is nothing to record.
    /// </summary>
    public static string? History(FaultedMessage message)
    {
        var hasFault = message.ExceptionType is not null || message.ExceptionMessage is not null;
        using var earlier = Parse(message.FaultHistory);
        var entries = earlier is null
            ? []
            : earlier.RootElement.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.Object).Select(e => e.GetRawText()).ToList();
        if (hasFault)
        {
            entries.Add(Entry(message));
        }

        if (entries.Count > HistoryLength)
        {
            entries.RemoveRange(0, entries.Count - HistoryLength);
        }

        // The brackets, and a comma between entries.
        var bytes = 2 + entries.Sum(e => Encoding.UTF8.GetByteCount(e) + 1);
        while (bytes > Contracts.JobHeaders.MaxFaultHistoryBytes && entries.Count > 0)
        {
            bytes -= Encoding.UTF8.GetByteCount(entries[0]) + 1;
            entries.RemoveAt(0);
        }

        return entries.Count == 0 ? null : $"[{string.Join(',', entries)}]";
    }

    /// <summary>This fault as a history entry: well under the history's byte bound, escapes included.</summary>
    private static string Entry(FaultedMessage message)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("exceptionType"u8, FaultedMessage.Cut(message.ExceptionType, HistoryTypeChars));
            writer.WriteString("message"u8, FaultedMessage.Cut(message.ExceptionMessage ?? "", HistoryMessageChars));
            writer.WriteString("faultedAt"u8, message.FaultedAt?.ToString("O", CultureInfo.InvariantCulture));
            writer.WriteEndObject();
        }

        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>A mangled history is dropped rather than carried along.</summary>
    private static JsonDocument? Parse(string? history)
    {
        if (history is null)
        {
            return null;
        }

        try
        {
            var document = JsonDocument.Parse(history);
            if (document.RootElement.ValueKind == JsonValueKind.Array)
            {
                return document;
            }

            document.Dispose();
        }
        catch (JsonException)
        {
            // Dropped.
        }

        return null;
    }

    private static bool IsStripped(string name)
    {
        // RabbitMQ's sender-selected distribution headers, matched as the broker matches them (exactly): a copy
        // published again through the default exchange would also be routed to each queue they name. The broker
        // keeps CC on the delivered message and MassTransit on its _error copy.
        if (name is "CC" or "BCC")
        {
            return true;
        }

        foreach (var prefix in StrippedPrefixes)
        {
            if (name.StartsWith(prefix, StringComparison.OrdinalIgnoreCase))
            {
                return true;
            }
        }

        return false;
    }
}
