using System.Text;
using System.Text.Json;
using Conveyor.Contracts;
using MassTransit;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Reads a MassTransit JSON envelope as it arrived, for what MassTransit's own reader lets through or
/// words for nobody: a command's fields that its contract does not have or that are given twice (it
/// drops the first and matches names in any casing), and a body that is no envelope at all.
/// </summary>
public static class EnvelopeReader
{
    public const string NotAnEnvelope =
        "not a MassTransit envelope: wrap the command in {\"messageType\": [\"urn:message:…\"], \"message\": {…}} as in README 'Publishing without the API'";

    public const string ByteOrderMark =
        "the body starts with a UTF-8 byte order mark (EF BB BF): send the JSON without it";

    /// <summary>As MassTransit reads an envelope (its serializer's settings).</summary>
    private static readonly JsonReaderOptions Options = new()
    {
        AllowTrailingCommas = true,
        CommentHandling = JsonCommentHandling.Skip,
    };

    /// <summary>
    /// What is wrong with the field names of the command in the envelope <paramref name="body"/>, read
    /// as a <typeparamref name="T"/> (<see cref="ContractFields.Check{T}"/>), and an envelope that gives
    /// its <c>message</c> twice. Empty when there is nothing to say, or when the body is not a JSON
    /// envelope (MassTransit read it some other way). One forward pass of a reader over the bytes, which
    /// MassTransit's deserializer already holds (<see cref="MessageBody.GetBytes"/> keeps them): no copy, no document.
    /// </summary>
    public static IReadOnlyList<ContractViolation> FieldProblems<T>(ReadOnlySpan<byte> body) where T : class
    {
        try
        {
            var reader = new Utf8JsonReader(body, Options);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return [];
            }

            IReadOnlyList<ContractViolation> problems = [];
            var messages = 0;
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isMessage = IsMessageProperty(ref reader);
                reader.Read();
                if (isMessage && reader.TokenType == JsonTokenType.StartObject)
                {
                    messages++;
                    problems = ContractFields.Check<T>(ref reader);
                }
                else
                {
                    messages += isMessage ? 1 : 0;
                    reader.Skip();
                }
            }

            return messages > 1 ? [new ContractViolation("message", "Is given more than once in the envelope.")] : problems;
        }
        catch (JsonException)
        {
            return [];
        }
    }

    /// <summary>
    /// Why MassTransit could not read <paramref name="body"/> as an envelope, for the producer to fix;
    /// null when the body is one (it failed for a reason MassTransit's own message gives).
    /// </summary>
    public static string? EnvelopeProblem(ReadOnlySpan<byte> body)
    {
        if (body.StartsWith(Encoding.UTF8.Preamble))
        {
            return ByteOrderMark;
        }

        try
        {
            var reader = new Utf8JsonReader(body, Options);
            if (!SeekMessage(ref reader))
            {
                return NotAnEnvelope;
            }

            return reader.TokenType == JsonTokenType.StartObject ? null : $"{NotAnEnvelope}; its \"message\" must be the command as a JSON object";
        }
        catch (JsonException)
        {
            // Not JSON: MassTransit's message says where it broke.
            return null;
        }
    }

    /// <summary>
    /// Moves <paramref name="reader"/> to the value of the envelope's first <c>message</c> property; false when the
    /// body is no JSON object or has none. Throws <see cref="JsonException"/> for a body that is no JSON.
    /// </summary>
    private static bool SeekMessage(ref Utf8JsonReader reader)
    {
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            return false;
        }

        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var isMessage = IsMessageProperty(ref reader);
            reader.Read();
            if (isMessage)
            {
                return true;
            }

            reader.Skip();
        }

        return false;
    }

    /// <summary>
    /// Why the command in the envelope <paramref name="body"/> cannot be read as a <typeparamref name="T"/>, read
    /// as MassTransit reads it (its serializer's options): a field of the wrong JSON type, an amount beyond its
    /// type, an id that is no UUID. Null when it reads, or when the body is no JSON envelope with a <c>message</c>
    /// object (MassTransit could not read the envelope, and says so itself).
    /// </summary>
    public static JsonException? CommandReadFailure<T>(ReadOnlySpan<byte> body) where T : class
    {
        try
        {
            var reader = new Utf8JsonReader(body, Options);
            if (!SeekMessage(ref reader) || reader.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }

            try
            {
                JsonSerializer.Deserialize<T>(ref reader, MassTransit.Serialization.SystemTextJsonMessageSerializer.Options);
                return null;
            }
            catch (JsonException failure)
            {
                return failure;
            }
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>
    /// The contract's type name (<c>Conveyor.Contracts.Payments.ChargePayment</c>) of the first of the
    /// envelope's <c>messageType</c> URNs, as MassTransit names it in <c>MT-Fault-MessageType</c>; null
    /// when <paramref name="body"/> is no JSON envelope or names no type.
    /// </summary>
    public static string? MessageTypeOf(ReadOnlySpan<byte> body)
    {
        try
        {
            var reader = new Utf8JsonReader(body, Options);
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return null;
            }

            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isType = reader.ValueTextEquals("messageType"u8);
                reader.Read();
                if (isType && reader.TokenType == JsonTokenType.StartArray)
                {
                    return reader.Read() && reader.TokenType == JsonTokenType.String ? TypeNameOfUrn(reader.GetString()!) : null;
                }

                reader.Skip();
            }

            return null;
        }
        catch (Exception exception) when (exception is JsonException or InvalidOperationException)
        {
            // Not JSON, or a string that is no valid text (a lone surrogate escape): no type to name.
            return null;
        }
    }

    /// <summary><c>urn:message:Conveyor.Contracts.Payments:ChargePayment</c> → <c>Conveyor.Contracts.Payments.ChargePayment</c>.</summary>
    private static string TypeNameOfUrn(string urn) =>
        urn.StartsWith(UrnPrefix, StringComparison.Ordinal) ? urn[UrnPrefix.Length..].Replace(':', '.') : urn;

    private const string UrnPrefix = "urn:message:";

    /// <summary>MassTransit matches the envelope's names in any casing.</summary>
    private static bool IsMessageProperty(ref Utf8JsonReader reader) =>
        reader.ValueTextEquals("message"u8)
        || (reader.ValueIsEscaped
            ? string.Equals(reader.GetString(), "message", StringComparison.OrdinalIgnoreCase)
            : Ascii.EqualsIgnoreCase(reader.ValueSpan, "message"u8));
}
