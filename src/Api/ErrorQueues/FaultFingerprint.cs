using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// Groups faults that are "the same problem": the exception type plus its message with the parts that
/// vary per message (GUIDs, long hexadecimal ids, ids mixing letters and digits, numbers) replaced by
/// placeholders.
/// </summary>
public static partial class FaultFingerprint
{
    /// <summary>The longest fingerprint message kept.</summary>
    private const int MaxMessageChars = 1000;

    /// <summary>
    /// How much of a message is normalised: several times what is kept, so ids and numbers of other
    /// lengths before the cut do not move it (the cut is made after normalising), with the regular
    /// expressions' work still bounded for huge messages.
    /// </summary>
    private const int MaxNormalisedInputChars = 8 * MaxMessageChars;

    /// <summary>
    /// A short stable id for the group: the first 12 hex digits of the SHA-256 of the fingerprint.
    /// </summary>
    public static string GroupId(string? exceptionType, string? message)
    {
        var fingerprint = $"{exceptionType ?? "(none)"}\n{Normalise(message)}";
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(fingerprint)))[..12];
    }

    public static string Normalise(string? message)
    {
        if (string.IsNullOrWhiteSpace(message))
        {
            return "";
        }

        // Both cuts fall between characters: half a surrogate pair kept alone is no text, and reads as a replacement character.
        var text = FaultedMessage.Cut(message, MaxNormalisedInputChars);
        text = Guids().Replace(text, "{guid}");
        text = HexIds().Replace(text, "{hex}");
        text = MixedIds().Replace(text, "{id}");
        text = Numbers().Replace(text, "{n}");
        text = Whitespace().Replace(text, " ").Trim();
        return FaultedMessage.Cut(text, MaxMessageChars);
    }

    [GeneratedRegex(@"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}", RegexOptions.CultureInvariant)]
    private static partial Regex Guids();

    /// <summary>Runs of 12+ hex digits with at least one digit (ids, hashes), not inside a longer word.</summary>
    [GeneratedRegex(@"(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{12,}(?![0-9A-Za-z])", RegexOptions.CultureInvariant)]
    private static partial Regex HexIds();

    /// <summary>
    /// Words of 8+ letters and digits with at least one of each, such as <c>NffrFeUfNV2Hib</c> in
    /// <c>cus_NffrFeUfNV2Hib</c> (keys, tokens, generated names). Underscores and dashes separate words.
    /// </summary>
    [GeneratedRegex(@"(?<![0-9A-Za-z])(?=[0-9A-Za-z]*[0-9])(?=[0-9A-Za-z]*[A-Za-z])[0-9A-Za-z]{8,}(?![0-9A-Za-z])", RegexOptions.CultureInvariant)]
    private static partial Regex MixedIds();

    [GeneratedRegex(@"\d+", RegexOptions.CultureInvariant)]
    private static partial Regex Numbers();

    [GeneratedRegex(@"\s+", RegexOptions.CultureInvariant)]
    private static partial Regex Whitespace();
}
