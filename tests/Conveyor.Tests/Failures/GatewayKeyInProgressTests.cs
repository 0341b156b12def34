using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A gateway that keeps idempotency keys answers 409 while an earlier request with the key is still in
/// progress. That request may still charge: the job keeps trying with the key until it gets the charge,
/// where a 409 taken for a permanent failure dead-lettered it and left a charge the ledger never recorded.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class GatewayKeyInProgressTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_charge_still_in_progress_at_the_gateway_when_its_attempt_timed_out_is_recorded_once_it_is_made()
    {
        var gatewayWorking = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.HoldNewCharges = gatewayWorking.Task;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            // The first attempt gives up on the held charge; the next ones meet it in progress.
            ("PaymentGateway:TimeoutSeconds", "1"),
            ("Consumers:ChargePayment:RetryLimit", "2"),
            ("Consumers:ChargePayment:RetryMinIntervalMilliseconds", "50"),
            ("Consumers:ChargePayment:RedeliveryLimit", "5"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "200")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-in-progress", AmountMinor = 4_200, Currency = "EUR" };
        var key = payment.PaymentId.ToString();
        try
        {
            await publisher.PublishAsync(payment);

            await Eventually.AssertAsync(() => Assert.True(gateway.InProgressConflictsFor(key) > 0));
        }
        finally
        {
            // The gateway finishes the first request's charge.
            gatewayWorking.TrySetResult();
        }

        var job = await fixture.WaitForSettledJobAsync(key);

        Assert.Equal(JobStatus.Succeeded, job.Status);
        var charge = Assert.Single(gateway.Charges);
        await using var db = fixture.CreateDbContext();
        var ledger = await db.Ledger.AsNoTracking().SingleOrDefaultAsync(l => l.PaymentId == payment.PaymentId);
        Assert.Equal(charge.Id, ledger?.GatewayChargeId);
    }
}
