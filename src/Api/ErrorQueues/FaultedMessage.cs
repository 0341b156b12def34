using System.Text;
using System.Text.Json;
using Conveyor.Contracts;
using RabbitMQ.Client;

namespace Conveyor.Api.ErrorQueues;

/// <summary>What Conveyor knows about a message in an <c>_error</c> or <c>_skipped</c> queue, from its headers and envelope.</summary>
public sealed record FaultedMessage
{
    private const string UrnPrefix = "urn:message:";

    public string? MessageId { get; init; }

    /// <summary>The contract's type name, such as <c>Conveyor.Contracts.Payments.ChargePayment</c>.</summary>
    public string? MessageType { get; init; }

    public string? JobId { get; init; }

    /// <summary>
    /// <see cref="JobId"/> as the jobs table keys it; null when the message names no job or the header
    /// is not a UUID (no job row can have it).
    /// </summary>
    public Guid? JobRowId => Guid.TryParse(JobId, out var id) ? id : null;

    public string? JobKind { get; init; }

    public string? ExceptionType { get; init; }

    public string? ExceptionMessage { get; init; }

    public string? StackTrace { get; init; }

    public DateTimeOffset? FaultedAt { get; init; }

    /// <summary>The queue the message was consumed from when it failed.</summary>
    public string? InputAddress { get; init; }

    public string? ConsumerType { get; init; }

    /// <summary><c>MT-Reason</c>: <c>fault</c> for <c>_error</c>, <c>skip</c> for <c>_skipped</c>.</summary>
    public string? Reason { get; init; }

    public int? Attempts { get; init; }

    public string? DeadLetterReason { get; init; }

    public string? FaultHistory { get; init; }

    public string? ContentType { get; init; }

    public int BodyBytes { get; init; }

    /// <summary>Fingerprint group of the fault (see <see cref="FaultFingerprint"/>).</summary>
    public string GroupId => FaultFingerprint.GroupId(ExceptionType, ExceptionMessage);

    public static FaultedMessage Read(IReadOnlyBasicProperties properties, ReadOnlySpan<byte> body)
    {
        var headers = properties.Headers;
        var messageId = properties.MessageId;
        var messageType = AmqpHeaders.Text(headers, FaultHeaders.MessageType);
        if (string.IsNullOrEmpty(messageId) || string.IsNullOrEmpty(messageType))
        {
            var (envelopeId, envelopeType) = ReadEnvelope(body);
            messageId = string.IsNullOrEmpty(messageId) ? envelopeId : messageId;
            messageType = string.IsNullOrEmpty(messageType) ? envelopeType : messageType;
        }

        return new FaultedMessage
        {
            MessageId = messageId,
            MessageType = messageType,
            JobId = AmqpHeaders.Text(headers, JobHeaders.JobId),
            JobKind = AmqpHeaders.Text(headers, FaultHeaders.JobKind),
            ExceptionType = AmqpHeaders.Text(headers, FaultHeaders.ExceptionType),
            ExceptionMessage = AmqpHeaders.Text(headers, FaultHeaders.Message),
            StackTrace = AmqpHeaders.Text(headers, FaultHeaders.StackTrace),
            FaultedAt = AmqpHeaders.Time(headers, FaultHeaders.Timestamp),
            InputAddress = AmqpHeaders.Text(headers, FaultHeaders.InputAddress),
            ConsumerType = AmqpHeaders.Text(headers, FaultHeaders.ConsumerType),
            Reason = AmqpHeaders.Text(headers, FaultHeaders.Reason),
            Attempts = AmqpHeaders.Number(headers, FaultHeaders.Attempts),
            DeadLetterReason = AmqpHeaders.Text(headers, FaultHeaders.DeadLetterReason),
            FaultHistory = AmqpHeaders.Text(headers, FaultHeaders.FaultHistory),
            ContentType = properties.ContentType,
            BodyBytes = body.Length,
        };
    }

    /// <summary>The first bytes of the body as text, for people to read.</summary>
    public static string Preview(ReadOnlySpan<byte> body, int maxBytes)
    {
        if (body.Length <= maxBytes)
        {
            return Encoding.UTF8.GetString(body);
        }

        // Do not cut a multi-byte character in half: back to its first byte, at most three back (a character of
        // UTF-8 has at most three bytes after its first). A body that is no UTF-8 is cut there all the same.
        var end = maxBytes;
        while (end > 0 && end > maxBytes - 3 && (body[end] & 0xC0) == 0x80)
        {
            end--;
        }

        return Encoding.UTF8.GetString(body[..end]);
    }

    /// <summary>At most <paramref name="chars"/> characters of <paramref name="text"/>, never ending inside a surrogate pair.</summary>
    [return: System.Diagnostics.CodeAnalysis.NotNullIfNotNull(nameof(text))]
    public static string? Cut(string? text, int chars)
    {
        if (text is null || text.Length <= chars)
        {
            return text;
        }

        var length = char.IsHighSurrogate(text[chars - 1]) ? chars - 1 : chars;
        return text[..length];
    }

    /// <summary>
    /// <c>messageId</c> and the first <c>messageType</c> of a MassTransit JSON envelope, for messages
    /// whose headers lack them (<c>_skipped</c> ones); nulls for any other body.
    /// </summary>
    private static (string? MessageId, string? MessageType) ReadEnvelope(ReadOnlySpan<byte> body)
    {
        // Most bodies that are not envelopes (binary, text, protobuf) are told apart by their first byte,
        // without the reader's exception, which a move of such messages would otherwise pay per message.
        if (!StartsLikeJsonObject(body))
        {
            return (null, null);
        }

        string? id = null;
        string? type = null;
        try
        {
            var reader = new Utf8JsonReader(body, new JsonReaderOptions { MaxDepth = 64 });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return (null, null);
            }

            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isId = reader.ValueTextEquals("messageId"u8);
                var isType = reader.ValueTextEquals("messageType"u8);
                reader.Read();
                if (isId && reader.TokenType == JsonTokenType.String)
                {
                    id = reader.GetString();
                }
                else if (isType && reader.TokenType == JsonTokenType.StartArray)
                {
                    var depth = reader.CurrentDepth;
                    while (reader.Read() && !(reader.TokenType == JsonTokenType.EndArray && reader.CurrentDepth == depth))
                    {
                        if (type is null && reader.TokenType == JsonTokenType.String)
                        {
                            type = TypeNameOfUrn(reader.GetString()!);
                        }
                        else
                        {
                            reader.Skip();
                        }
                    }
                }
                else
                {
                    reader.Skip();
                }

                if (id is not null && type is not null)
                {
                    break;
                }
            }
        }
        catch (Exception exception) when (exception is JsonException or InvalidOperationException)
        {
            // Not an envelope (JsonException), or a string in it that is no valid UTF-16 text, such as a
            // lone surrogate escape (InvalidOperationException): the caller shows what the headers say.
        }

        return (id, type);
    }

    private static bool StartsLikeJsonObject(ReadOnlySpan<byte> body)
    {
        var start = body.IndexOfAnyExcept(" \t\r\n"u8);
        return start >= 0 && body[start] == (byte)'{';
    }

    /// <summary><c>urn:message:Conveyor.Contracts.Payments:ChargePayment</c> → <c>Conveyor.Contracts.Payments.ChargePayment</c>.</summary>
    public static string TypeNameOfUrn(string urn) =>
        urn.StartsWith(UrnPrefix, StringComparison.Ordinal) ? urn[UrnPrefix.Length..].Replace(':', '.') : urn;
}
