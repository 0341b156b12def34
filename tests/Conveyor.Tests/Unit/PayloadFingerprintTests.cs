using System.Text.Json;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Api.ErrorQueues;
using Conveyor.Contracts.Webhooks;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Jobs;
using Conveyor.Storage;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Unit;

/// <summary>What the inbox takes for "the same command" (ADR 0011).</summary>
public sealed class PayloadFingerprintTests
{
    private static readonly JsonSerializerOptions Wire = new(JsonSerializerDefaults.Web);

    [Fact]
    public void Commands_with_the_same_fields_have_one_fingerprint_whatever_order_or_casing_their_fields_arrived_in()
    {
        var id = Guid.NewGuid();
        var first = JsonSerializer.Deserialize<ChargePayment>(
            $$"""{"paymentId":"{{id}}","accountId":"acct-1","amountMinor":500,"currency":"EUR"}""", Wire)!;
        var second = JsonSerializer.Deserialize<ChargePayment>(
            $$"""{ "Currency": "EUR", "AmountMinor": 500, "accountId": "acct-1", "paymentId": "{{id}}" }""", Wire)!;

        Assert.Equal(PayloadFingerprint.Length, PayloadFingerprint.Of(first)!.Length);
        Assert.Equal(PayloadFingerprint.Of(first), PayloadFingerprint.Of(second));
        Assert.False(PayloadFingerprint.Conflicts(PayloadFingerprint.Of(first), PayloadFingerprint.Of(second)));
    }

    [Fact]
    public void Any_field_with_another_value_gives_another_fingerprint()
    {
        var charge = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-1", AmountMinor = 500, Currency = "EUR" };
        var fingerprint = PayloadFingerprint.Of(charge);

        Assert.All(
            new[] { charge with { AmountMinor = 501 }, charge with { AccountId = "acct-2" }, charge with { Currency = "USD" } },
            changed => Assert.True(PayloadFingerprint.Conflicts(fingerprint, PayloadFingerprint.Of(changed))));
    }

    [Fact]
    public void An_optional_field_left_out_and_one_given_as_null_are_the_same_command_and_a_value_is_not()
    {
        var id = Guid.NewGuid();
        var without = JsonSerializer.Deserialize<GenerateReport>($$"""{"reportId":"{{id}}"}""", Wire)!;
        var asNull = JsonSerializer.Deserialize<GenerateReport>($$"""{"reportId":"{{id}}","pageSize":null,"currency":null}""", Wire)!;
        var withValue = JsonSerializer.Deserialize<GenerateReport>($$"""{"reportId":"{{id}}","pageSize":100}""", Wire)!;

        Assert.Equal(PayloadFingerprint.Of(without), PayloadFingerprint.Of(asNull));
        Assert.True(PayloadFingerprint.Conflicts(PayloadFingerprint.Of(without), PayloadFingerprint.Of(withValue)));
    }

    [Fact]
    public void A_webhook_payload_counts_by_its_content_not_by_its_whitespace()
    {
        var url = new Uri("https://hooks.example.com/in");
        var id = Guid.NewGuid();
        DeliverWebhook With(string payload) => new() { WebhookId = id, Url = url, EventType = "invoice.paid", Payload = JsonDocument.Parse(payload).RootElement.Clone() };

        Assert.Equal(PayloadFingerprint.Of(With("""{"invoice":7,"lines":[1,2]}""")), PayloadFingerprint.Of(With("""{ "invoice": 7, "lines": [ 1, 2 ] }""")));
        Assert.True(PayloadFingerprint.Conflicts(PayloadFingerprint.Of(With("""{"invoice":7}""")), PayloadFingerprint.Of(With("""{"invoice":8}"""))));
    }

    [Fact]
    public void A_webhook_payload_counts_by_its_members_not_by_the_order_they_came_in_at_any_depth()
    {
        var url = new Uri("https://hooks.example.com/in");
        var id = Guid.NewGuid();
        DeliverWebhook With(string payload) => new() { WebhookId = id, Url = url, EventType = "order.paid", Payload = JsonDocument.Parse(payload).RootElement.Clone() };
        var fingerprint = PayloadFingerprint.Of(With("""{"orderId":42,"amount":12.5,"customer":{"tier":"gold","id":7},"lines":[{"sku":"a","qty":1}]}"""));

        Assert.Equal(fingerprint, PayloadFingerprint.Of(With("""{"lines":[{"qty":1,"sku":"a"}],"customer":{"id":7,"tier":"gold"},"amount":12.5,"orderId":42}""")));
        // Arrays keep their order, numbers their text, and a member's value stays its own.
        string[] others =
            [
                """{"orderId":42,"amount":12.5,"customer":{"tier":"gold","id":7},"lines":[{"sku":"a","qty":1},{"sku":"b","qty":1}]}""",
                """{"orderId":42,"amount":12.50,"customer":{"tier":"gold","id":7},"lines":[{"sku":"a","qty":1}]}""",
                """{"orderId":42,"amount":12.5,"customer":{"tier":"gold","id":8},"lines":[{"sku":"a","qty":1}]}""",
                """{"orderId":42,"amount":12.5,"customer":{"tier":7,"id":"gold"},"lines":[{"sku":"a","qty":1}]}""",
            ];
        Assert.All(others, other => Assert.True(PayloadFingerprint.Conflicts(fingerprint, PayloadFingerprint.Of(With(other)))));
        Assert.True(PayloadFingerprint.Conflicts(PayloadFingerprint.Of(With("[1,2]")), PayloadFingerprint.Of(With("[2,1]"))));
    }

    [Fact]
    public void A_row_holding_the_fingerprint_from_before_name_order_is_the_same_command_and_only_for_the_order_it_was_taken_in()
    {
        var url = new Uri("https://hooks.example.com/in");
        var id = Guid.NewGuid();
        DeliverWebhook With(string payload) => new() { WebhookId = id, Url = url, EventType = "order.paid", Payload = JsonDocument.Parse(payload).RootElement.Clone() };
        var arrived = With("""{"orderId":42,"amount":12.5}""");
        var stored = LegacyFingerprints.Of(arrived);
        var fingerprint = PayloadFingerprint.Of(arrived);

        Assert.NotEqual(stored, fingerprint);
        Assert.Equal(stored, PayloadFingerprint.LegacyOf(fingerprint));
        Assert.False(PayloadFingerprint.Conflicts(stored, fingerprint));
        Assert.Equal(id.ToString(), RemoteIdempotencyKeys.For(id.ToString(), stored, fingerprint));
        // Another order of it was never fingerprinted as that row says (nothing can tell), nor is another command.
        Assert.True(PayloadFingerprint.Conflicts(stored, PayloadFingerprint.Of(With("""{"amount":12.5,"orderId":42}"""))));
        Assert.True(PayloadFingerprint.Conflicts(stored, PayloadFingerprint.Of(With("""{"orderId":43,"amount":12.5}"""))));

        // Objects in name order, and commands without any, were fingerprinted the same way before: no second pass.
        var sorted = With("""{"amount":12.5,"orderId":42}""");
        Assert.Equal(LegacyFingerprints.Of(sorted), PayloadFingerprint.Of(sorted));
        Assert.Null(PayloadFingerprint.LegacyOf(PayloadFingerprint.Of(sorted)));
        var charge = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "a", AmountMinor = 1, Currency = "EUR" };
        Assert.Equal(LegacyFingerprints.Of(charge), PayloadFingerprint.Of(charge));
    }

    [Fact]
    public void A_payload_put_in_name_order_is_fingerprinted_alike_by_pods_from_before_and_after()
    {
        // What the Api publishes, so that an older worker's fingerprint of it is the one the Api stored.
        var command = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(), Url = new Uri("https://hooks.example.com/in"), EventType = "order.paid",
            Payload = JsonDocument.Parse("""{"z":{"b":"\u00e9\"x","a":1.50e3},"a":[{"y":null,"x":true}],"m":"tab\t"}""").RootElement.Clone(),
        };
        var published = command with { Payload = PayloadFingerprint.InNameOrder(command.Payload) };

        Assert.Equal("""{"a":[{"x":true,"y":null}],"m":"tab\t","z":{"a":1.50e3,"b":"\u00E9\u0022x"}}""", published.Payload.GetRawText());
        Assert.Equal(PayloadFingerprint.Of(command), LegacyFingerprints.Of(published));
        Assert.Equal(PayloadFingerprint.Of(command), PayloadFingerprint.Of(published));
        var alreadySorted = published with { Payload = PayloadFingerprint.InNameOrder(published.Payload) };
        Assert.Equal(published.Payload.GetRawText(), alreadySorted.Payload.GetRawText());
    }

    [Fact]
    public void Conflicts_of_one_consumer_fall_into_one_error_queue_group_whatever_their_keys_and_fingerprints()
    {
        // Fixed ids, so the test does not depend on chance: a fingerprint's hex with no digit in it
        // (about 1 in 100,000) is not taken for an id, and would make a group of its own.
        string Message(string paymentId)
        {
            var payment = new ChargePayment { PaymentId = Guid.Parse(paymentId), AccountId = "acct-1", AmountMinor = 500, Currency = "EUR" };
            return new IdempotencyConflictException("charge-payment", payment.PaymentId.ToString(),
                PayloadFingerprint.Of(payment), PayloadFingerprint.Of(payment with { AmountMinor = 501 })).Message;
        }

        var type = typeof(IdempotencyConflictException).FullName;
        Assert.Equal(
            FaultFingerprint.GroupId(type, Message("6c0f1f4e-2b7a-4d59-9a51-0c3e8f2d7b61")),
            FaultFingerprint.GroupId(type, Message("e9b3a7d2-51c4-4f08-8e6d-3a2b1c0d9f84")));
    }

    [Fact]
    public void A_command_that_cannot_be_written_again_has_no_fingerprint_and_nothing_conflicts_with_none()
    {
        // An unset payload no writer takes: the consumer refuses such a command with the reason, so the inbox must not throw first.
        var broken = new DeliverWebhook { WebhookId = Guid.NewGuid(), Url = new Uri("https://hooks.example.com/in"), EventType = "x", Payload = default };
        var some = PayloadFingerprint.Of(new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "a", AmountMinor = 1, Currency = "EUR" });

        Assert.Null(PayloadFingerprint.Of(broken));
        Assert.False(PayloadFingerprint.Conflicts(null, some));
        Assert.False(PayloadFingerprint.Conflicts(some, null));
        Assert.Equal("none", PayloadFingerprint.Describe(null));
    }

    [Fact]
    public void A_charge_is_keyed_by_its_payment_id_unless_it_corrects_the_command_its_job_was_first_created_for()
    {
        var first = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-1", AmountMinor = 500, Currency = "EUR" };
        var corrected = first with { AmountMinor = 400 };
        var id = first.PaymentId.ToString();
        var (original, fingerprint) = (PayloadFingerprint.Of(first), PayloadFingerprint.Of(corrected)!);

        Assert.Equal(id, RemoteIdempotencyKeys.For(id, original, PayloadFingerprint.Of(first with { })));
        Assert.Equal(id, RemoteIdempotencyKeys.For(id, null, fingerprint));
        Assert.Equal(id, RemoteIdempotencyKeys.For(id, original, null));
        Assert.Equal($"{id}:{Convert.ToHexStringLower(fingerprint)}", RemoteIdempotencyKeys.For(id, original, fingerprint));
    }
}
