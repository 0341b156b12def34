using System.Text;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A command published straight to RabbitMQ meets the Api's field-name rules (ADR 0008): a field given
/// twice or one its contract does not have sends it to <c>_error</c> unrun, naming the field; a body
/// that is no MassTransit envelope says so.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class StrictMessageFieldsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";
    private const string ReportExchange = "Conveyor.Contracts.Reports:GenerateReport";
    private const string ReportUrn = "urn:message:Conveyor.Contracts.Reports:GenerateReport";
    private const string Reason = "Conveyor-Dead-Letter-Reason";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_field_given_twice_in_different_casings_is_dead_lettered_naming_it_and_charges_nothing()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var payment = Guid.NewGuid();

        await producer.PublishRawAsync(ChargeExchange, Envelope(ChargeUrn,
            $$"""{"paymentId":"{{payment}}","accountId":"acct-dup","amountMinor":1250,"currency":"EUR","Currency":"USD"}"""),
            RawAmqpProducer.EnvelopeContentType);

        var dead = await TakeOneAsync(producer, "charge-payment_error");
        Assert.Equal(
            "permanent failure; not retried: Invalid ChargePayment: Currency: Is given more than once, in different casings.",
            dead.Header(Reason));
        Assert.Equal("Invalid ChargePayment: Currency: Is given more than once, in different casings.", dead.Header("MT-Fault-Message"));
        var job = await JobAsync(payment.ToString());
        Assert.Equal(JobStatus.DeadLettered, job?.Status);
        Assert.Equal(job!.Id.ToString(), dead.Header("Conveyor-Job-Id"));
        Assert.Equal(0, gateway.TotalRequests);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Ledger.CountAsync());
    }

    [Fact]
    public async Task A_field_given_twice_in_the_same_casing_is_dead_lettered_too()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        await producer.PublishRawAsync(ChargeExchange, Envelope(ChargeUrn,
            $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-dup","amountMinor":1250,"amountMinor":99,"currency":"EUR"}"""),
            RawAmqpProducer.EnvelopeContentType);

        var dead = await TakeOneAsync(producer, "charge-payment_error");
        Assert.Equal("Invalid ChargePayment: amountMinor: Is given more than once.", dead.Header("MT-Fault-Message"));
        Assert.Equal(0, gateway.TotalRequests);
    }

    [Fact]
    public async Task A_misspelt_optional_field_is_dead_lettered_naming_it_instead_of_widening_the_report()
    {
        await using var worker = await fixture.StartWorkerAsync();
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var report = Guid.NewGuid();

        await producer.PublishRawAsync(ReportExchange, Envelope(ReportUrn,
            $$"""{"reportId":"{{report}}","account_id":"acct-1"}"""),
            RawAmqpProducer.EnvelopeContentType);

        var dead = await TakeOneAsync(producer, "generate-report_error");
        Assert.Equal(
            "permanent failure; not retried: Invalid GenerateReport: account_id: Is not a field of GenerateReport; the fields are: reportId, accountId, currency, pageSize.",
            dead.Header(Reason));
        Assert.Equal(JobStatus.DeadLettered, (await JobAsync(report.ToString()))?.Status);
        await using var db = fixture.CreateDbContext();
        Assert.False(await db.Reports.AnyAsync(r => r.ReportId == report));
    }

    [Fact]
    public async Task A_body_without_the_envelope_is_dead_lettered_with_a_reason_that_names_the_envelope()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        await producer.PublishRawAsync(ChargeExchange, RawAmqpProducer.Utf8(
            $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-bare","amountMinor":1250,"currency":"EUR"}"""), "application/json");

        var dead = await TakeOneAsync(producer, "charge-payment_error");
        Assert.StartsWith("unreadable message: not a MassTransit envelope: wrap the command in {\"messageType\"", dead.Header(Reason), StringComparison.Ordinal);
        Assert.Contains("README 'Publishing without the API'", dead.Header(Reason), StringComparison.Ordinal);
        Assert.Equal(0, gateway.TotalRequests);
    }

    [Fact]
    public async Task A_body_that_starts_with_a_byte_order_mark_is_dead_lettered_naming_it()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        var body = Envelope(ChargeUrn, $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-bom","amountMinor":1250,"currency":"EUR"}""");
        await producer.PublishRawAsync(ChargeExchange, [.. Encoding.UTF8.Preamble, .. body], RawAmqpProducer.EnvelopeContentType);

        var dead = await TakeOneAsync(producer, "charge-payment_error");
        Assert.StartsWith("unreadable message: the body starts with a UTF-8 byte order mark", dead.Header(Reason), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Commands_whose_fields_are_the_contracts_are_charged_in_any_single_casing()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var raw = Guid.NewGuid();
        var pascal = Guid.NewGuid();
        var published = Guid.NewGuid();

        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn, new { paymentId = raw, accountId = "acct-ok", amountMinor = 100, currency = "EUR" });
        await producer.PublishRawAsync(ChargeExchange, Envelope(ChargeUrn,
            $$"""{"PaymentId":"{{pascal}}","AccountId":"acct-ok","AmountMinor":200,"Currency":"EUR"}"""),
            RawAmqpProducer.EnvelopeContentType);
        await publisher.PublishAsync(new ChargePayment { PaymentId = published, AccountId = "acct-ok", AmountMinor = 300, Currency = "EUR" });

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(3, await db.Ledger.CountAsync(l => l.PaymentId == raw || l.PaymentId == pascal || l.PaymentId == published));
        });
        Assert.Empty(await producer.TakeAllAsync("charge-payment_error"));
    }

    /// <summary>An envelope as README shows it, around the command's JSON as given (which a serializer could not repeat a field in).</summary>
    private static byte[] Envelope(string messageUrn, string message) => RawAmqpProducer.Utf8(
        $$"""{"messageId":"{{Guid.NewGuid()}}","messageType":["{{messageUrn}}"],"sentTime":"{{DateTimeOffset.UtcNow:O}}","headers":{},"message":{{message}}}""");

    private async Task<RawAmqpProducer.TakenMessage> TakeOneAsync(RawAmqpProducer producer, string queue)
    {
        // Declared as the worker declares it, which it does at its first fault: taking from a queue that
        // is not there yet would close the producer's channel.
        await using (var broker = await TestBroker.ConnectAsync(fixture))
        {
            await broker.DeclareAsync(queue);
        }

        var taken = new List<RawAmqpProducer.TakenMessage>();
        await Eventually.AssertAsync(async () =>
        {
            taken.AddRange(await producer.TakeAllAsync(queue));
            Assert.NotEmpty(taken);
        });
        return Assert.Single(taken);
    }

    private async Task<Job?> JobAsync(string businessKey)
    {
        await using var db = fixture.CreateDbContext();
        return await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.BusinessKey == businessKey);
    }
}
