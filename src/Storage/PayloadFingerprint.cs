using System.Buffers;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Conveyor.Storage;

/// <summary>
/// What a command says, as 16 bytes the inbox keeps beside its key (ADR 0011): a later message under
/// the same key that says something else is not a duplicate but a conflict, and is dead-lettered
/// instead of acked unapplied.
/// </summary>
/// <remarks>
/// Taken over the deserialized command written again as JSON, not over the bytes that arrived: the
/// envelope (message id, timestamps, host) differs between copies of one command, and fields are
/// written in the contract's declared order whatever order a producer used. Null fields are left out,
/// so an optional field added to a contract later does not change the fingerprint of a command that
/// does not use it. A free-form JSON value inside a command (a webhook's payload) has the members of
/// its objects written in ordinal name order, at every depth; arrays keep their order, and numbers
/// their text (<c>12.5</c> and <c>12.50</c> differ).
/// <para>
/// Until 2026-12-02 such a value was written in the order its members arrived. Rows and
/// older pods keep that fingerprint (ADR 0011, amendment), so a command whose objects were not in name
/// order also has a legacy fingerprint (<see cref="LegacyOf"/>), and <see cref="Conflicts"/> takes
/// either as the same command.
/// </para>
/// </remarks>
public static class PayloadFingerprint
{
    public const int Length = 16;

    private static readonly JsonSerializerOptions ArrivalOrder = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    private static readonly JsonSerializerOptions Canonical = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new MembersInNameOrder() },
    };

    /// <summary>
    /// The legacy fingerprint of a command that has one, keyed by the array <see cref="Of"/> returned:
    /// every comparison site gets it with the fingerprint it already carries, and nothing else is kept
    /// once that array is gone. Only commands with an object out of name order are in it.
    /// </summary>
    private static readonly ConditionalWeakTable<byte[], byte[]> Legacy = [];

    /// <summary>Set by <see cref="MembersInNameOrder"/> when it wrote an object in another order than it arrived.</summary>
    [ThreadStatic]
    private static bool t_reordered;

    /// <summary>
    /// The fingerprint, or null for a command that cannot be written again (a required field missing, so
    /// it holds a value no writer takes): its consumer refuses it with the reason, and a row without a
    /// fingerprint conflicts with nothing.
    /// </summary>
    public static byte[]? Of(object message)
    {
        t_reordered = false;
        var fingerprint = Hash(message, Canonical);
        // Serialization is synchronous, so the flag is this call's. Only a command that had an object out
        // of name order pays for the second pass; every other one's legacy fingerprint is this one.
        if (fingerprint is not null && t_reordered && Hash(message, ArrivalOrder) is { } legacy)
        {
            Legacy.AddOrUpdate(fingerprint, legacy);
        }

        return fingerprint;
    }

    /// <summary>
    /// The fingerprint the command had before objects were written in name order, when it differs from
    /// <paramref name="fingerprint"/> (an array <see cref="Of"/> returned); else null. Rows written by
    /// older pods hold it, so a statement that compares stored fingerprints passes it beside the other.
    /// </summary>
    public static byte[]? LegacyOf(byte[]? fingerprint) =>
        fingerprint is not null && Legacy.TryGetValue(fingerprint, out var legacy) ? legacy : null;

    /// <summary>
    /// True when a stored fingerprint says the command differs from <paramref name="fingerprint"/>.
    /// A row written before fingerprints were kept has none and conflicts with nothing; so does a
    /// command that has none. A row holding the command's legacy fingerprint is the same command.
    /// </summary>
    public static bool Conflicts(byte[]? stored, [NotNullWhen(true)] byte[]? fingerprint) =>
        stored is not null && fingerprint is not null && !stored.AsSpan().SequenceEqual(fingerprint)
        && !(LegacyOf(fingerprint) is { } legacy && stored.AsSpan().SequenceEqual(legacy));

    /// <summary>
    /// <paramref name="value"/> with the members of its objects in the order the fingerprint writes them;
    /// the same value when they are already. Written so, a command's fingerprint is the same under either
    /// function, the one before name order and this one.
    /// </summary>
    public static JsonElement InNameOrder(JsonElement value)
    {
        if (MembersInNameOrder.AreInNameOrder(value))
        {
            return value;
        }

        var buffer = new ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            MembersInNameOrder.WriteInNameOrder(writer, value);
        }

        using var document = JsonDocument.Parse(buffer.WrittenMemory);
        return document.RootElement.Clone();
    }

    /// <summary>A short hex form for logs and fault messages.</summary>
    public static string Describe(byte[]? fingerprint) =>
        fingerprint is null ? "none" : Convert.ToHexStringLower(fingerprint.AsSpan(0, Math.Min(6, fingerprint.Length)));

    private static byte[]? Hash(object message, JsonSerializerOptions options)
    {
        byte[] json;
        try
        {
            json = JsonSerializer.SerializeToUtf8Bytes(message, message.GetType(), options);
        }
        catch (Exception exception) when (exception is JsonException or InvalidOperationException or NotSupportedException or ArgumentException)
        {
            return null;
        }

        return SHA256.HashData(json)[..Length];
    }

    /// <summary>
    /// Writes a JSON value with its objects' members in ordinal name order. A value whose objects are all
    /// in that order already is written as it always was (so its fingerprint is the legacy one); names
    /// given twice (only a direct publish can carry them: the Api refuses them) keep their relative order.
    /// </summary>
    private sealed class MembersInNameOrder : JsonConverter<JsonElement>
    {
        public override JsonElement Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            JsonElement.ParseValue(ref reader);

        public override void Write(Utf8JsonWriter writer, JsonElement value, JsonSerializerOptions options)
        {
            if (AreInNameOrder(value))
            {
                value.WriteTo(writer);
                return;
            }

            t_reordered = true;
            WriteInNameOrder(writer, value);
        }

        public static bool AreInNameOrder(JsonElement value)
        {
            switch (value.ValueKind)
            {
                case JsonValueKind.Object:
                    string? previous = null;
                    foreach (var member in value.EnumerateObject())
                    {
                        if ((previous is not null && string.CompareOrdinal(previous, member.Name) > 0) || !AreInNameOrder(member.Value))
                        {
                            return false;
                        }

                        previous = member.Name;
                    }

                    return true;
                case JsonValueKind.Array:
                    foreach (var item in value.EnumerateArray())
                    {
                        if (!AreInNameOrder(item))
                        {
                            return false;
                        }
                    }

                    return true;
                default:
                    return true;
            }
        }

        public static void WriteInNameOrder(Utf8JsonWriter writer, JsonElement value)
        {
            switch (value.ValueKind)
            {
                case JsonValueKind.Object:
                    writer.WriteStartObject();
                    // OrderBy is stable: names given twice stay in the order they came.
                    foreach (var member in value.EnumerateObject().OrderBy(m => m.Name, StringComparer.Ordinal))
                    {
                        writer.WritePropertyName(member.Name);
                        WriteInNameOrder(writer, member.Value);
                    }

                    writer.WriteEndObject();
                    break;
                case JsonValueKind.Array:
                    writer.WriteStartArray();
                    foreach (var item in value.EnumerateArray())
                    {
                        WriteInNameOrder(writer, item);
                    }

                    writer.WriteEndArray();
                    break;
                default:
                    // Numbers keep their text, strings their value, as before.
                    value.WriteTo(writer);
                    break;
            }
        }
    }
}
