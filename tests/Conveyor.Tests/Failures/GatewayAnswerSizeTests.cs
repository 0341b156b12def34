using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Payments;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A charge's answer is read up to a bound, not buffered whole whatever its size: a gateway (or a proxy
/// in front of it) answering a huge body fails the attempt as transient, and a later attempt with the
/// same Idempotency-Key gets the charge the gateway kept for it.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class GatewayAnswerSizeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_charge_answered_with_a_body_over_the_bound_fails_the_attempt_as_transient_and_is_recorded_on_a_later_one()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.PadChargeAnswersWith = 16 * HttpPaymentGateway.MaxAnswerBytes;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "3"),
            // Far beyond the test: the second attempt comes when the test makes it due.
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-huge-answer", AmountMinor = 1_500, Currency = "EUR" };

        await publisher.PublishAsync(payment);

        var scheduled = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.RetryScheduled);
        Assert.Equal(1, scheduled.Attempts);
        Assert.Contains($"The payment gateway answered a charge with a body over {HttpPaymentGateway.MaxAnswerBytes / 1024} KiB", scheduled.LastError, StringComparison.Ordinal);
        var charge = Assert.Single(gateway.Charges);

        gateway.PadChargeAnswersWith = 0;
        await fixture.MakeScheduledMessagesDueAsync();

        await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.Succeeded);
        Assert.Equal(2, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Single(gateway.Charges);
        await using var db = fixture.CreateDbContext();
        var ledger = await db.Ledger.AsNoTracking().SingleOrDefaultAsync(l => l.PaymentId == payment.PaymentId);
        Assert.Equal(charge.Id, ledger?.GatewayChargeId);
    }
}
