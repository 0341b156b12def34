using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// The <c>Conveyor-Job-Id</c> header is a claim any sender can make, in any JSON type: one that is not a
/// job id string is ignored, as an unknown id is, and the command runs.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class JobIdHeaderTypeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_job_id_header_given_as_a_string_still_names_the_new_jobs_row()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var (payment, claimed) = (Guid.NewGuid(), Guid.NewGuid());

        await producer.PublishRawAsync(ChargeExchange, Envelope(payment, $"\"{claimed}\""), RawAmqpProducer.EnvelopeContentType);

        var job = await fixture.WaitForJobAsync(payment.ToString(), JobStatus.Succeeded);
        Assert.Equal(claimed, job.Id);
    }

    [Theory]
    [InlineData("42")]
    [InlineData("""{"id":"7d1f0c9e-8a8e-4d0b-9a59-0c6a1b1f2e3d"}""")]
    [InlineData("null")]
    public async Task A_command_whose_job_id_header_is_no_string_is_charged_once_and_succeeds(string headerJson)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var payment = Guid.NewGuid();

        await producer.PublishRawAsync(ChargeExchange, Envelope(payment, headerJson), RawAmqpProducer.EnvelopeContentType);

        var job = await fixture.WaitForJobAsync(payment.ToString(), JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, "charge-payment");
        Assert.Equal(1, job.Attempts);
        Assert.Equal(1, gateway.SuccessfulRequestsFor(payment.ToString()));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == payment));
    }

    private static byte[] Envelope(Guid payment, string jobIdHeaderJson) => RawAmqpProducer.Utf8(
        $$$"""{"messageId":"{{{Guid.NewGuid()}}}","messageType":["{{{ChargeUrn}}}"],"sentTime":"{{{DateTimeOffset.UtcNow:O}}}","headers":{"Conveyor-Job-Id":{{{jobIdHeaderJson}}}},"message":{"paymentId":"{{{payment}}}","accountId":"acct-header","amountMinor":1300,"currency":"EUR"}}""");
}
