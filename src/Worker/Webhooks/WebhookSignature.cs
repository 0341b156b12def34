using System.Security.Cryptography;
using System.Text;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// <c>Conveyor-Signature: t=&lt;unix seconds&gt;,v1=&lt;hex HMAC-SHA256 of "t.body"&gt;,v2=&lt;hex HMAC-SHA256 of
/// "t.id.eventType\nbody"&gt;,v3=&lt;hex HMAC-SHA256 of "t.id.eventType\nkey\nbody"&gt;</c>, where <c>id</c> is the
/// <c>Conveyor-Webhook-Id</c>, <c>eventType</c> the <c>Conveyor-Event-Type</c> and <c>key</c> the
/// <c>Idempotency-Key</c> sent with it. Signing the timestamp lets a receiver reject replays of old
/// deliveries; <c>v3</c> also binds the headers a receiver acts on, so a captured delivery cannot be sent
/// again within the receiver's tolerance under a fresh key or id (past its deduplication) or as another
/// event. The key is the one a receiver deduplicates by (a corrected webhook has a key of its own under
/// the same id, ADR 0011), so <c>v2</c>, which leaves it out, lets a capture be replayed under a fresh key.
/// An event type holds no control character (the contract refuses one) and no header value a line break,
/// so each line break ends a field. <c>v1</c> and <c>v2</c> are kept for receivers written against them;
/// new receivers verify <c>v3</c> (<see cref="Verify"/>). While a secret is rotated out, the header carries
/// one <c>v1</c>, <c>v2</c>, <c>v3</c> set per secret, the current secret's first, and a delivery is genuine
/// when any <c>v3</c> verifies: a receiver still holding the old secret and one holding the new both verify it.
/// </summary>
public static class WebhookSignature
{
    public const string HeaderName = "Conveyor-Signature";

    /// <summary>How far a delivery's timestamp may be from the receiver's clock in <see cref="Verify"/> unless told otherwise.</summary>
    public static readonly TimeSpan DefaultTolerance = TimeSpan.FromMinutes(5);

    public static string Create(string secret, long unixSeconds, string webhookId, string idempotencyKey, string eventType, ReadOnlySpan<byte> body) =>
        Create([secret], unixSeconds, webhookId, idempotencyKey, eventType, body);

    /// <summary>The header signed with each of <paramref name="secrets"/>, in their order.</summary>
    public static string Create(
        IReadOnlyList<string> secrets, long unixSeconds, string webhookId, string idempotencyKey, string eventType, ReadOnlySpan<byte> body)
    {
        var header = new StringBuilder($"t={unixSeconds}");
        foreach (var secret in secrets)
        {
            var key = Encoding.UTF8.GetBytes(secret);
            header.Append($",v1={Mac(key, $"{unixSeconds}.", body)},v2={Mac(key, $"{unixSeconds}.{webhookId}.{eventType}\n", body)}");
            header.Append($",v3={V3(key, unixSeconds, webhookId, idempotencyKey, eventType, body)}");
        }

        return header.ToString();
    }

    /// <summary>
    /// What a receiver does: reads <c>t</c> and <c>v3</c>, refuses a timestamp further than
    /// <paramref name="tolerance"/> (default <see cref="DefaultTolerance"/>) from <paramref name="now"/>,
    /// recomputes <c>v3</c> over the id, idempotency key, event type and body received, and compares it in
    /// constant time with each <c>v3</c> of the header (one per secret the sender signs with). A header
    /// without <c>v3</c> does not verify, so a capture stripped down to its <c>v2</c> gains nothing; nor does
    /// an id that is not a UUID as the sender writes it, since a dot moved between id and event type keeps the signature.
    /// </summary>
    public static bool Verify(
        string secret, string header, string webhookId, string idempotencyKey, string eventType, ReadOnlySpan<byte> body, DateTimeOffset now, TimeSpan? tolerance = null)
    {
        string? timestamp = null;
        var signatures = new List<string>();
        foreach (var part in header.Split(',', StringSplitOptions.TrimEntries))
        {
            if (part.StartsWith("t=", StringComparison.Ordinal))
            {
                timestamp = part[2..];
            }
            else if (part.StartsWith("v3=", StringComparison.Ordinal))
            {
                signatures.Add(part[3..]);
            }
        }

        if (!long.TryParse(timestamp, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var seconds)
            || signatures.Count == 0
            // The id is a UUID: any other text could hold a dot taken from the event type's start, which signs
            // the same bytes ("<id>.customer" and "subscription.deleted" for "<id>" and "customer.subscription.deleted").
            || !Guid.TryParseExact(webhookId, "D", out _)
            // A line break would move bytes between the fields the signature keeps apart.
            || eventType.Contains('\n', StringComparison.Ordinal)
            || idempotencyKey.Contains('\n', StringComparison.Ordinal)
            || seconds > DateTimeOffset.MaxValue.ToUnixTimeSeconds()
            || (now - DateTimeOffset.FromUnixTimeSeconds(seconds)).Duration() > (tolerance ?? DefaultTolerance))
        {
            return false;
        }

        var expected = Encoding.ASCII.GetBytes(V3(Encoding.UTF8.GetBytes(secret), seconds, webhookId, idempotencyKey, eventType, body));
        var verified = false;
        foreach (var signature in signatures)
        {
            // Every one compared, so the time taken says nothing about which one matched.
            verified |= CryptographicOperations.FixedTimeEquals(expected, Encoding.ASCII.GetBytes(signature));
        }

        return verified;
    }

    /// <summary>The <c>v3</c> signature: what the signer sends and the receiver recomputes, one format for both.</summary>
    private static string V3(byte[] key, long unixSeconds, string webhookId, string idempotencyKey, string eventType, ReadOnlySpan<byte> body) =>
        Mac(key, $"{unixSeconds}.{webhookId}.{eventType}\n{idempotencyKey}\n", body);

    private static string Mac(byte[] key, string prefix, ReadOnlySpan<byte> body)
    {
        var head = Encoding.UTF8.GetBytes(prefix);
        var signed = new byte[head.Length + body.Length];
        head.CopyTo(signed, 0);
        body.CopyTo(signed.AsSpan(head.Length));
        return Convert.ToHexStringLower(HMACSHA256.HashData(key, signed));
    }
}
