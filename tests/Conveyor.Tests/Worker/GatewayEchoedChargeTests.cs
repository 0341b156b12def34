using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A gateway answer that echoes the charge's <c>amountMinor</c> and <c>currency</c> is held to what was asked.
/// One that says another amount or currency was charged (a gateway that answered the key with another charge, a
/// conversion) was ignored: the ledger recorded the amount asked under the charge id of a charge of another amount.
/// Now the job is dead-lettered saying what the gateway answered; the same amount and currency, the currency in any
/// casing (gateways such as Stripe answer <c>eur</c>), is recorded as before.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class GatewayEchoedChargeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(900L, "EUR", true)]
    [InlineData(900L, "eur", true)]
    [InlineData(90_000L, "EUR", false)]
    [InlineData(900L, "USD", false)]
    public async Task A_charge_echoed_with_another_amount_or_currency_is_not_recorded_as_the_one_asked(long echoedAmount, string echoedCurrency, bool matches)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.EchoChargesAs = _ => (echoedAmount, echoedCurrency);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(("Consumers:ChargePayment:RetryLimit", "0")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-echo", AmountMinor = 900, Currency = "EUR" };

        await publisher.PublishAsync(payment);

        var job = await fixture.WaitForJobAsync(payment.PaymentId, matches ? JobStatus.Succeeded : JobStatus.DeadLettered);
        await using var check = fixture.CreateDbContext();
        var ledger = await check.Ledger.AsNoTracking().SingleOrDefaultAsync(l => l.PaymentId == payment.PaymentId);
        if (matches)
        {
            Assert.Equal(Assert.Single(gateway.Charges).Id, ledger?.GatewayChargeId);
            Assert.Equal(900, ledger?.AmountMinor);
            Assert.Equal("EUR", ledger?.Currency);
        }
        else
        {
            Assert.Null(ledger);
            Assert.Contains($"{echoedAmount} {echoedCurrency}", job.LastError, StringComparison.Ordinal);
            Assert.Contains("900 EUR", job.LastError, StringComparison.Ordinal);
            Assert.Equal(1, gateway.RequestsFor(payment.PaymentId.ToString()));
        }
    }
}
