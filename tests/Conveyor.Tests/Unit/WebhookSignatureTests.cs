using System.Text;
using Conveyor.Worker.Webhooks;

namespace Conveyor.Tests.Unit;

public sealed class WebhookSignatureTests
{
    private const string Secret = "secret-0123456789";
    private const string Id = "5f0c6a54-2f4e-4c0b-9d7e-0a4f3f1c2b11";
    private const string Key = Id;
    private const string EventType = "order.paid";
    private static readonly byte[] Body = Encoding.UTF8.GetBytes("""{"a":1}""");
    private static readonly DateTimeOffset SentAt = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000);

    [Fact]
    public void A_signature_verifies_with_its_secret_id_event_type_and_body_only()
    {
        var header = WebhookSignature.Create(Secret, 1_700_000_000, Id, Key, EventType, Body);

        Assert.Matches("^t=1700000000,v1=[0-9a-f]{64},v2=[0-9a-f]{64},v3=[0-9a-f]{64}$", header);
        Assert.True(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify("secret-9876543210", header, Id, Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Encoding.UTF8.GetBytes("""{"a":2}"""), SentAt));
        Assert.False(WebhookSignature.Verify(Secret, header, Guid.NewGuid().ToString(), Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, header, Id, Key, "order.refunded", Body, SentAt));
        // A captured delivery sent again under a fresh Idempotency-Key, which a receiver deduplicates by, or
        // stripped down to the v2 that leaves the key out.
        Assert.False(WebhookSignature.Verify(Secret, header, Id, $"{Id}:0123456789abcdef", EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, header[..header.IndexOf(",v3=", StringComparison.Ordinal)], Id, Key, EventType, Body, SentAt));
        // The key's end is fixed too.
        Assert.False(WebhookSignature.Verify(Secret, WebhookSignature.Create(Secret, 1_700_000_000, Id, Key, EventType, Encoding.UTF8.GetBytes("x\n{\"a\":1}")), Id, $"{Key}\nx", EventType, Body, SentAt));
        // The event type's end is fixed: bytes cannot move between it and the body.
        Assert.False(WebhookSignature.Verify(Secret, WebhookSignature.Create(Secret, 1_700_000_000, Id, Key, "order", Encoding.UTF8.GetBytes(".paid\n{\"a\":1}")), Id, Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, header.Replace("t=1700000000", "t=1700000001", StringComparison.Ordinal), Id, Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, "garbage", Id, Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, "t=99999999999999999999,v3=00", Id, Key, EventType, Body, SentAt));
    }

    /// <summary>
    /// The signed text joins the id and the event type with a dot, and an event type may hold dots: a capture of
    /// <c>customer.subscription.deleted</c> sent with its id as <c>&lt;id&gt;.customer</c> and its event type as
    /// <c>subscription.deleted</c> signs the same bytes, so it verified as another event. The id is a UUID, so one
    /// with anything else in it is refused.
    /// </summary>
    [Fact]
    public void A_delivery_does_not_verify_as_another_event_with_a_dot_moved_from_its_event_type_into_its_id()
    {
        var header = WebhookSignature.Create(Secret, 1_700_000_000, Id, Key, "customer.subscription.deleted", Body);

        Assert.True(WebhookSignature.Verify(Secret, header, Id, Key, "customer.subscription.deleted", Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, header, $"{Id}.customer", Key, "subscription.deleted", Body, SentAt));
        Assert.False(WebhookSignature.Verify(Secret, header, $"{Id}.customer.subscription", Key, "deleted", Body, SentAt));
    }

    [Fact]
    public void A_signature_older_or_newer_than_the_tolerance_is_refused()
    {
        var header = WebhookSignature.Create(Secret, 1_700_000_000, Id, Key, EventType, Body);

        Assert.True(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Body, SentAt.AddMinutes(4)));
        Assert.True(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Body, SentAt.AddMinutes(-4)));
        Assert.False(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Body, SentAt.AddMinutes(6)));
        Assert.False(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Body, SentAt.AddMinutes(-6)));
        Assert.True(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Body, SentAt.AddMinutes(20), TimeSpan.FromMinutes(30)));
    }

    [Fact]
    public void A_header_signed_with_the_current_and_a_previous_secret_verifies_with_either_and_starts_as_before()
    {
        const string Previous = "previous-secret-0123456789";
        var header = WebhookSignature.Create([Secret, Previous], 1_700_000_000, Id, Key, EventType, Body);

        // The current secret's pair first, as a header signed with it alone: receivers reading the first pair keep working.
        Assert.StartsWith(WebhookSignature.Create(Secret, 1_700_000_000, Id, Key, EventType, Body) + ",v1=", header, StringComparison.Ordinal);
        Assert.Matches("^t=1700000000(,v1=[0-9a-f]{64},v2=[0-9a-f]{64},v3=[0-9a-f]{64}){2}$", header);
        Assert.True(WebhookSignature.Verify(Secret, header, Id, Key, EventType, Body, SentAt));
        Assert.True(WebhookSignature.Verify(Previous, header, Id, Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify("secret-9876543210", header, Id, Key, EventType, Body, SentAt));
        Assert.False(WebhookSignature.Verify(Previous, header, Id, Key, "order.refunded", Body, SentAt));
    }

    [Fact]
    public void A_previous_signing_secret_under_16_characters_is_refused()
    {
        var options = new WebhookOptions { SigningSecret = Secret, PreviousSigningSecrets = ["too-short"] };
        var results = new List<System.ComponentModel.DataAnnotations.ValidationResult>();

        Assert.False(System.ComponentModel.DataAnnotations.Validator.TryValidateObject(options, new(options), results, validateAllProperties: true));
        Assert.Contains(results, r => r.MemberNames.Contains(nameof(WebhookOptions.PreviousSigningSecrets)));
    }

    [Fact]
    public void The_v1_signature_is_the_hmac_of_the_timestamp_and_body_as_before()
    {
        var header = WebhookSignature.Create(Secret, 1_700_000_000, Id, Key, EventType, Body);
        var expected = Convert.ToHexStringLower(System.Security.Cryptography.HMACSHA256.HashData(
            Encoding.UTF8.GetBytes(Secret), (byte[])[.. Encoding.UTF8.GetBytes("1700000000."), .. Body]));

        Assert.Contains($",v1={expected},", header, StringComparison.Ordinal);
    }

    [Fact]
    public void The_v2_signature_is_the_hmac_of_the_timestamp_id_event_type_and_body_as_before()
    {
        var header = WebhookSignature.Create(Secret, 1_700_000_000, Id, $"{Id}:0123456789abcdef", EventType, Body);
        var expected = Convert.ToHexStringLower(System.Security.Cryptography.HMACSHA256.HashData(
            Encoding.UTF8.GetBytes(Secret), (byte[])[.. Encoding.UTF8.GetBytes($"1700000000.{Id}.{EventType}\n"), .. Body]));

        Assert.Contains($",v2={expected},", header, StringComparison.Ordinal);
    }
}
