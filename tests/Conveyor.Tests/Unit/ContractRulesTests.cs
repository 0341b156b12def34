using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Contracts.Webhooks;

namespace Conveyor.Tests.Unit;

/// <summary>The contracts' own rules, which the Api and the worker both apply.</summary>
public sealed class ContractRulesTests
{
    private static readonly ChargePayment Charge = new()
    {
        PaymentId = Guid.NewGuid(),
        AccountId = "acct-1:eu.2",
        AmountMinor = 1,
        Currency = "EUR",
    };

    private static readonly DeliverWebhook Webhook = new()
    {
        WebhookId = Guid.NewGuid(),
        Url = new Uri("https://hooks.example.com/orders?x=1"),
        EventType = "order.paid",
        Payload = JsonDocument.Parse("""{"orderId":7}""").RootElement.Clone(),
    };

    [Fact]
    public void Valid_commands_break_no_rule()
    {
        Assert.Empty(Charge.Validate());
        Assert.Empty((Charge with { AmountMinor = 1_000_000_000_000_000 }).Validate());
        Assert.Empty(new GenerateReport { ReportId = Guid.NewGuid() }.Validate());
        Assert.Empty(new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-1", Currency = "JPY", PageSize = 10_000 }.Validate());
        Assert.Empty(Webhook.Validate());
    }

    [Fact]
    public void Each_broken_field_of_a_charge_is_named_once()
    {
        var charge = new ChargePayment { PaymentId = Guid.Empty, AccountId = "acct 1", AmountMinor = 1_000_000_000_000_001, Currency = "XXX" };

        Assert.Equal(["paymentId", "accountId", "amountMinor", "currency"], charge.Validate().Select(v => v.Field));
    }

    [Theory]
    [InlineData("")]
    [InlineData("acct\n1")]
    [InlineData("acct-\u00e9")]
    [InlineData("acct-\ud800")]
    public void Account_ids_outside_the_allowed_characters_break_the_rule(string accountId)
    {
        var violation = Assert.Single((Charge with { AccountId = accountId }).Validate());
        Assert.Equal("accountId", violation.Field);
    }

    [Theory]
    [InlineData("eur")]
    [InlineData("ZZZ")]
    [InlineData("XAU")] // gold: an ISO code, not a currency in circulation
    public void Currencies_must_be_active_iso_codes(string currency)
    {
        Assert.Equal(["currency"], (Charge with { Currency = currency }).Validate().Select(v => v.Field));
        Assert.Equal(["currency"], new GenerateReport { ReportId = Guid.NewGuid(), Currency = currency }.Validate().Select(v => v.Field));
    }

    [Theory]
    [InlineData("commande.créée")]
    [InlineData("order.paid\r\nX-Forged: 1")]
    [InlineData("order\tpaid")]
    [InlineData("order.\u007f")]
    [InlineData("\ud83d\ude00")]
    public void Event_types_that_cannot_be_an_http_header_value_break_the_rule(string eventType)
    {
        var violation = Assert.Single((Webhook with { EventType = eventType }).Validate());
        Assert.Equal("eventType", violation.Field);
        Assert.Contains("ASCII", violation.Problem, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("order.paid ")]
    [InlineData(" order.paid")]
    [InlineData(" order.paid ")]
    public void Event_types_with_a_space_at_either_end_break_the_rule(string eventType)
    {
        // HTTP drops those spaces from the header value, so the receiver could not verify the signature.
        var violation = Assert.Single((Webhook with { EventType = eventType }).Validate());
        Assert.Equal("eventType", violation.Field);
        Assert.Contains("space", violation.Problem, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("order.paid")]
    [InlineData("Order Paid/v2 (EU) ~#1")]
    public void Event_types_of_printable_ascii_are_valid(string eventType) =>
        Assert.Empty((Webhook with { EventType = eventType }).Validate());

    [Theory]
    [InlineData("https://hooks.example.com/a\u0000b")]
    [InlineData("https://hooks.example.com/a\tb")]
    [InlineData("https://hooks.example.com/a\u007fb")]
    public void Webhook_urls_with_control_characters_break_the_rule(string url)
    {
        Assert.NotNull(ContractRules.WebhookUrl(url));
        if (Uri.TryCreate(url, UriKind.Absolute, out var parsed))
        {
            // What a directly published command deserializes to: refused by the worker's check too.
            Assert.Equal(["url"], (Webhook with { Url = parsed }).Validate().Select(v => v.Field));
        }
    }

    [Theory]
    [InlineData("https://hook:s3cret@hooks.example.com/x")]
    [InlineData("https://hook@hooks.example.com/x")]
    [InlineData("http://:s3cret@hooks.example.com/")]
    public void Webhook_urls_with_user_information_break_the_rule(string url)
    {
        Assert.NotNull(ContractRules.WebhookUrl(url));
        Assert.Equal(["url"], (Webhook with { Url = new Uri(url) }).Validate().Select(v => v.Field));
    }

    [Theory]
    [InlineData("https://hooks.example.com:0/x")]
    [InlineData("http://93.184.215.14:00/")]
    [InlineData("http://[2606:4700::1]:0/x")]
    public void Webhook_urls_naming_port_0_break_the_rule(string url)
    {
        Assert.NotNull(ContractRules.WebhookUrl(url));
        Assert.Equal(["url"], (Webhook with { Url = new Uri(url) }).Validate().Select(v => v.Field));
    }

    [Fact]
    public void Webhook_urls_whose_host_name_DNS_cannot_resolve_break_the_rule()
    {
        // 5 labels of 60 and ".com": 308 characters, beyond DNS's 253.
        var longName = string.Join('.', Enumerable.Repeat(new string('a', 60), 5)) + ".com";
        var longLabel = new string('b', 64) + ".example.com";
        foreach (var url in new[] { $"https://{longName}/x", $"https://{longLabel}/x" })
        {
            Assert.NotNull(ContractRules.WebhookUrl(url));
            Assert.Equal(["url"], (Webhook with { Url = new Uri(url) }).Validate().Select(v => v.Field));
        }

        // At the limits (253 characters, labels of 63, a final dot not counted) and an address literal: fine.
        var longest = string.Join('.', Enumerable.Repeat(new string('c', 63), 3)) + "." + new string('d', 61);
        Assert.Equal(253, longest.Length);
        Assert.Null(ContractRules.WebhookUrl($"https://{longest}./x"));
        Assert.Null(ContractRules.WebhookUrl("https://[2606:4700:4700:0000:0000:0000:0000:1111]/x"));
    }

    [Fact]
    public void Nulls_in_required_fields_that_deserialization_let_through_break_the_rules()
    {
        // System.Text.Json fills a required non-nullable string with an explicit null.
        var charge = Charge with { AccountId = null!, Currency = null! };
        var webhook = Webhook with { Url = null!, EventType = null!, Payload = default };

        Assert.Equal(["accountId", "currency"], charge.Validate().Select(v => v.Field));
        Assert.Equal(["url", "eventType", "payload"], webhook.Validate().Select(v => v.Field));
    }

    [Fact]
    public void Reports_and_webhooks_name_their_broken_fields()
    {
        var report = new GenerateReport { ReportId = Guid.Empty, AccountId = "a b", PageSize = 0 };
        Assert.Equal(["reportId", "accountId", "pageSize"], report.Validate().Select(v => v.Field));

        var webhook = Webhook with { Url = new Uri("ftp://files.example.com/x"), EventType = " " };
        Assert.Equal(["url", "eventType"], webhook.Validate().Select(v => v.Field));
        Assert.Equal(["url"], (Webhook with { Url = new Uri("https://hooks.example.com/" + new string('a', 2048)) }).Validate().Select(v => v.Field));
        Assert.Equal(["payload"], (Webhook with { Payload = JsonDocument.Parse("null").RootElement.Clone() }).Validate().Select(v => v.Field));
    }
}
