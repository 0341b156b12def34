using System.Security.Cryptography;
using System.Text;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// <c>Conveyor-Signature: t=&lt;unix seconds&gt;,v1=&lt;hex HMAC-SHA256 of "t.body"&gt;</c>. Signing the
/// timestamp with the body lets a receiver reject replays of old deliveries.
/// </summary>
public static class WebhookSignature
{
    public const string HeaderName = "Conveyor-Signature";

    public static string Create(string secret, long unixSeconds, ReadOnlySpan<byte> body)
    {
        var prefix = Encoding.UTF8.GetBytes($"{unixSeconds}.");
        var signed = new byte[prefix.Length + body.Length];
        prefix.CopyTo(signed, 0);
        body.CopyTo(signed.AsSpan(prefix.Length));
        var mac = HMACSHA256.HashData(Encoding.UTF8.GetBytes(secret), signed);
        return $"t={unixSeconds},v1={Convert.ToHexStringLower(mac)}";
    }

    /// <summary>What a receiver does: recompute and compare in constant time.</summary>
    public static bool Verify(string secret, string header, ReadOnlySpan<byte> body)
    {
        var parts = header.Split(',', StringSplitOptions.TrimEntries);
        var timestamp = parts.FirstOrDefault(p => p.StartsWith("t=", StringComparison.Ordinal))?[2..];
        if (!long.TryParse(timestamp, out var seconds))
        {
            return false;
        }

        var expected = Encoding.ASCII.GetBytes(Create(secret, seconds, body));
        return CryptographicOperations.FixedTimeEquals(expected, Encoding.ASCII.GetBytes(header));
    }
}
