using System.Security.Cryptography;
using System.Text;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// <c>Conveyor-Signature: t=&lt;unix seconds&gt;,v1=&lt;hex HMAC-SHA256 of "t.body"&gt;,v2=&lt;hex HMAC-SHA256 of
/// "t.id.eventType\nbody"&gt;</c>, where <c>id</c> is the <c>Conveyor-Webhook-Id</c> and <c>eventType</c> the
/// <c>Conveyor-Event-Type</c> sent with it. Signing the timestamp lets a receiver reject replays of old
/// deliveries; <c>v2</c> also binds the headers a receiver acts on, so a captured delivery cannot be sent
/// again within the receiver's tolerance under a fresh id (past its deduplication) or as another event.
/// An event type holds no control character (the contract refuses one), so the line break ends it.
/// <c>v1</c> is kept for receivers written against it; new receivers verify <c>v2</c>
/// (<see cref="Verify"/>). While a secret is rotated out, the header carries one <c>v1</c>, <c>v2</c> pair
/// per secret, the current secret's first, and a delivery is genuine when any <c>v2</c> verifies: a
/// receiver still holding the old secret and one holding the new both verify it.
/// </summary>
public static class WebhookSignature
{
    public const string HeaderName = "Conveyor-Signature";

    /// <summary>How far a delivery's timestamp may be from the receiver's clock in <see cref="Verify"/> unless told otherwise.</summary>
    public static readonly TimeSpan DefaultTolerance = TimeSpan.FromMinutes(5);

    public static string Create(string secret, long unixSeconds, string webhookId, string eventType, ReadOnlySpan<byte> body) =>
        Create([secret], unixSeconds, webhookId, eventType, body);

    /// <summary>The header signed with each of <paramref name="secrets"/>, in their order.</summary>
    public static string Create(IReadOnlyList<string> secrets, long unixSeconds, string webhookId, string eventType, ReadOnlySpan<byte> body)
    {
        var header = new StringBuilder($"t={unixSeconds}");
        foreach (var secret in secrets)
        {
            var key = Encoding.UTF8.GetBytes(secret);
            header.Append($",v1={Mac(key, $"{unixSeconds}.", body)},v2={V2(key, unixSeconds, webhookId, eventType, body)}");
        }

        return header.ToString();
    }

    /// <summary>
    /// What a receiver does: reads <c>t</c> and <c>v2</c>, refuses a timestamp further than
    /// <paramref name="tolerance"/> (default <see cref="DefaultTolerance"/>) from <paramref name="now"/>,
    /// recomputes <c>v2</c> over the id, event type and body received, and compares it in constant time
    /// with each <c>v2</c> of the header (one per secret the sender signs with).
    /// </summary>
    public static bool Verify(
        string secret, string header, string webhookId, string eventType, ReadOnlySpan<byte> body, DateTimeOffset now, TimeSpan? tolerance = null)
    {
        string? timestamp = null;
        var signatures = new List<string>();
        foreach (var part in header.Split(',', StringSplitOptions.TrimEntries))
        {
            if (part.StartsWith("t=", StringComparison.Ordinal))
            {
                timestamp = part[2..];
            }
            else if (part.StartsWith("v2=", StringComparison.Ordinal))
            {
                signatures.Add(part[3..]);
            }
        }

        if (!long.TryParse(timestamp, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var seconds)
            || signatures.Count == 0
            || seconds > DateTimeOffset.MaxValue.ToUnixTimeSeconds()
            || (now - DateTimeOffset.FromUnixTimeSeconds(seconds)).Duration() > (tolerance ?? DefaultTolerance))
        {
            return false;
        }

        var expected = Encoding.ASCII.GetBytes(V2(Encoding.UTF8.GetBytes(secret), seconds, webhookId, eventType, body));
        var verified = false;
        foreach (var signature in signatures)
        {
            // Every one compared, so the time taken says nothing about which one matched.
            verified |= CryptographicOperations.FixedTimeEquals(expected, Encoding.ASCII.GetBytes(signature));
        }

        return verified;
    }

    /// <summary>The <c>v2</c> signature: what the signer sends and the receiver recomputes, one format for both.</summary>
    private static string V2(byte[] key, long unixSeconds, string webhookId, string eventType, ReadOnlySpan<byte> body) =>
        Mac(key, $"{unixSeconds}.{webhookId}.{eventType}\n", body);

    private static string Mac(byte[] key, string prefix, ReadOnlySpan<byte> body)
    {
        var head = Encoding.UTF8.GetBytes(prefix);
        var signed = new byte[head.Length + body.Length];
        head.CopyTo(signed, 0);
        body.CopyTo(signed.AsSpan(head.Length));
        return Convert.ToHexStringLower(HMACSHA256.HashData(key, signed));
    }
}
