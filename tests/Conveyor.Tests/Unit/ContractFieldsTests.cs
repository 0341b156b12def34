using System.Text;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Contracts.Webhooks;
using Conveyor.Worker.Messaging;

namespace Conveyor.Tests.Unit;

/// <summary>The field-name rules a command meets on either way in, and what the worker says of a body that is no envelope.</summary>
public sealed class ContractFieldsTests
{
    [Fact]
    public void The_fields_of_each_contract_are_its_camel_case_property_names()
    {
        Assert.Equal(["paymentId", "accountId", "amountMinor", "currency"], ContractFields.Of<ChargePayment>());
        Assert.Equal(["reportId", "accountId", "currency", "pageSize"], ContractFields.Of<GenerateReport>());
        Assert.Equal(["webhookId", "url", "eventType", "payload"], ContractFields.Of<DeliverWebhook>());
    }

    [Theory]
    [InlineData("""{"paymentId":"x","accountId":"a","amountMinor":1,"currency":"EUR"}""")]
    [InlineData("""{"PaymentId":"x","ACCOUNTID":"a","amountminor":1,"Currency":"EUR"}""")]
    [InlineData("""{"currency":"EUR"}""")]
    [InlineData("""{"pay\u006dentId":"x","currency":{"currency":1,"currency":2}}""")]
    [InlineData("""{}""")]
    public void Each_field_given_once_in_any_casing_is_fine(string json) => Assert.Empty(Check<ChargePayment>(json));

    [Theory]
    [InlineData("""{"currency":"EUR","Currency":"USD"}""", "Currency", ContractFields.GivenTwiceInDifferentCasings)]
    [InlineData("""{"Currency":"EUR","CURRENCY":"USD"}""", "CURRENCY", ContractFields.GivenTwiceInDifferentCasings)]
    [InlineData("""{"currency":"EUR","currency":"USD"}""", "currency", ContractFields.GivenTwice)]
    [InlineData("""{"Currency":"EUR","Currency":"USD"}""", "Currency", ContractFields.GivenTwice)]
    [InlineData("""{"currency":"EUR","curr\u0065ncy":"USD"}""", "currency", ContractFields.GivenTwice)]
    public void A_field_given_twice_is_named_as_it_was_given_the_second_time(string json, string field, string problem) =>
        Assert.Equal(new ContractViolation(field, problem), Assert.Single(Check<ChargePayment>(json)));

    [Fact]
    public void A_field_the_contract_does_not_have_is_named_with_the_fields_it_has()
    {
        var violation = Assert.Single(Check<GenerateReport>("""{"reportId":"x","account_id":"acct-1","accountId":null}"""));

        Assert.Equal(new ContractViolation("account_id", "Is not a field of GenerateReport; the fields are: reportId, accountId, currency, pageSize."), violation);
    }

    [Fact]
    public void A_hostile_object_gets_a_bounded_answer()
    {
        var json = "{" + string.Join(",", Enumerable.Range(0, 500).Select(i => $"\"{new string('x', 1000)}{i}\":1")) + "}";

        var violations = Check<ChargePayment>(json);

        Assert.Equal(ContractFields.MaxReported, violations.Count);
        Assert.All(violations, v => Assert.True(v.Field.Length <= 101));
    }

    [Fact]
    public void The_envelopes_command_is_found_in_any_casing_and_a_repeated_one_is_refused()
    {
        Assert.Equal("Currency", Assert.Single(EnvelopeFields<ChargePayment>("""{"headers":{"currency":1},"Message":{"currency":"EUR","Currency":"USD"}}""")).Field);
        Assert.Empty(EnvelopeFields<ChargePayment>("""{"messageType":["urn:x"],"message":{"currency":"EUR"},}"""));
        Assert.Equal("message", Assert.Single(EnvelopeFields<ChargePayment>("""{"message":{"currency":"EUR"},"message":{"currency":"USD"}}""")).Field);
        // Not an envelope, or not JSON: MassTransit's reader decides.
        Assert.Empty(EnvelopeFields<ChargePayment>("charge acct-1"));
        Assert.Empty(EnvelopeFields<ChargePayment>("[1]"));
    }

    [Theory]
    [InlineData("""{"paymentId":"x","currency":"EUR"}""", EnvelopeReader.NotAnEnvelope)]
    [InlineData("""[{"message":{}}]""", EnvelopeReader.NotAnEnvelope)]
    [InlineData("""{"messageType":["urn:x"],"message":"text"}""", EnvelopeReader.NotAnEnvelope + "; its \"message\" must be the command as a JSON object")]
    [InlineData("""{"messageType":["urn:x"],"Message":{}}""", null)]
    [InlineData("""{"message":{"paymentId":""", null)]
    [InlineData("charge acct-1", null)]
    [InlineData("", null)]
    public void A_body_that_is_no_envelope_is_named_so(string body, string? problem) =>
        Assert.Equal(problem, EnvelopeReader.EnvelopeProblem(Encoding.UTF8.GetBytes(body)));

    [Fact]
    public void A_byte_order_mark_is_named()
    {
        byte[] body = [.. Encoding.UTF8.Preamble, .. """{"message":{}}"""u8];

        Assert.Equal(EnvelopeReader.ByteOrderMark, EnvelopeReader.EnvelopeProblem(body));
    }

    [Theory]
    [InlineData("""{"messageId":"1","messageType":["urn:message:Conveyor.Contracts.Payments:ChargePayment","urn:message:Other:Base"],"message":{}}""", "Conveyor.Contracts.Payments.ChargePayment")]
    [InlineData("""{"message":{"messageType":["urn:message:A:B"]},"messageType":["urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook"]}""", "Conveyor.Contracts.Webhooks.DeliverWebhook")]
    [InlineData("""{"messageType":[],"message":{}}""", null)]
    [InlineData("""{"messageType":"urn:message:A:B","message":{}}""", null)]
    [InlineData("""{"messageType":["\ud800"],"message":{}}""", null)]
    [InlineData("""[{"messageType":["urn:message:A:B"]}]""", null)]
    [InlineData("not json", null)]
    public void The_contract_an_envelope_names_first_is_its_message_type(string body, string? messageType) =>
        Assert.Equal(messageType, EnvelopeReader.MessageTypeOf(Encoding.UTF8.GetBytes(body)));

    private static IReadOnlyList<ContractViolation> Check<T>(string json) where T : class
    {
        var reader = new Utf8JsonReader(Encoding.UTF8.GetBytes(json));
        reader.Read();
        var violations = ContractFields.Check<T>(ref reader);
        Assert.Equal(JsonTokenType.EndObject, reader.TokenType);
        return violations;
    }

    private static IReadOnlyList<ContractViolation> EnvelopeFields<T>(string body) where T : class =>
        EnvelopeReader.FieldProblems<T>(Encoding.UTF8.GetBytes(body));
}
