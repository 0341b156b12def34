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
/// does not use it.
/// </remarks>
public static class PayloadFingerprint
{
    public const int Length = 16;

    private static readonly JsonSerializerOptions Canonical = new()
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>
    /// The fingerprint, or null for a command that cannot be written again (a required field missing, so
    /// it holds a value no writer takes): its consumer refuses it with the reason, and a row without a
    /// fingerprint conflicts with nothing.
    /// </summary>
    public static byte[]? Of(object message)
    {
        byte[] json;
        try
        {
            json = JsonSerializer.SerializeToUtf8Bytes(message, message.GetType(), Canonical);
        }
        catch (Exception exception) when (exception is JsonException or InvalidOperationException or NotSupportedException or ArgumentException)
        {
            return null;
        }

        return SHA256.HashData(json)[..Length];
    }

    /// <summary>
    /// True when a stored fingerprint says the command differs from <paramref name="fingerprint"/>.
    /// A row written before fingerprints were kept has none and conflicts with nothing; so does a
    /// command that has none.
    /// </summary>
    public static bool Conflicts(byte[]? stored, byte[]? fingerprint) =>
        stored is not null && fingerprint is not null && !stored.AsSpan().SequenceEqual(fingerprint);

    /// <summary>A short hex form for logs and fault messages.</summary>
    public static string Describe(byte[]? fingerprint) =>
        fingerprint is null ? "none" : Convert.ToHexStringLower(fingerprint.AsSpan(0, Math.Min(6, fingerprint.Length)));
}
