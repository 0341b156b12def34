using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// Groups faults that are "the same problem": the exception type plus its message with the parts that
/// vary per message (GUIDs, long hexadecimal ids, numbers) replaced by placeholders.
/// </summary>
public static partial class FaultFingerprint
{
    private const int MaxMessageChars = 1000;

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

        var text = message.Length > MaxMessageChars ? message[..MaxMessageChars] : message;
        text = Guids().Replace(text, "{guid}");
        text = HexIds().Replace(text, "{hex}");
        text = Numbers().Replace(text, "{n}");
        return Whitespace().Replace(text, " ").Trim();
    }

    [GeneratedRegex(@"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}", RegexOptions.CultureInvariant)]
    private static partial Regex Guids();

    /// <summary>Runs of 12+ hex digits with at least one digit (ids, hashes), not inside a longer word.</summary>
    [GeneratedRegex(@"(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[0-9])[0-9a-fA-F]{12,}(?![0-9A-Za-z])", RegexOptions.CultureInvariant)]
    private static partial Regex HexIds();

    [GeneratedRegex(@"\d+", RegexOptions.CultureInvariant)]
    private static partial Regex Numbers();

    [GeneratedRegex(@"\s+", RegexOptions.CultureInvariant)]
    private static partial Regex Whitespace();
}
