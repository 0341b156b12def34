using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The gateway's charge id is recorded in the ledger as it was answered. One longer than the ledger
/// holds was cut to the column's length on the way in (the parameter takes the column's size), so
/// the ledger named a charge the gateway does not know; now the job is dead-lettered saying why.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class GatewayChargeIdTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(LedgerEntry.MaxGatewayChargeIdLength, true)]
    [InlineData(LedgerEntry.MaxGatewayChargeIdLength + 1, false)]
    public async Task A_charge_id_is_recorded_whole_or_the_job_is_dead_lettered_saying_why(int length, bool fits)
    {
        var chargeId = "ch_" + new string('x', length - 3);
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.NewChargeId = () => chargeId;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(("Consumers:ChargePayment:RetryLimit", "0")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-charge-id", AmountMinor = 900, Currency = "EUR" };

        await publisher.PublishAsync(payment);

        var job = await fixture.WaitForJobAsync(payment.PaymentId, fits ? JobStatus.Succeeded : JobStatus.DeadLettered);
        await using var check = fixture.CreateDbContext();
        var ledger = await check.Ledger.AsNoTracking().SingleOrDefaultAsync(l => l.PaymentId == payment.PaymentId);
        if (fits)
        {
            Assert.Equal(chargeId, ledger?.GatewayChargeId);
        }
        else
        {
            Assert.Null(ledger);
            Assert.Contains("charge id the ledger cannot record", job.LastError, StringComparison.Ordinal);
        }
    }
}
