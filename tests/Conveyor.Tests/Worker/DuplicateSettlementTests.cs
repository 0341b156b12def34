using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A duplicate the inbox recognises is handled: acked, and not moved to <c>charge-payment_skipped</c>,
/// the queue for messages no consumer understands. Otherwise every redelivery, replay or repeated
/// publish would leave a copy there for operators to wonder about.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class DuplicateSettlementTests(ConveyorFixture fixture)
{
    private const string Queue = "charge-payment";

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_duplicate_is_acked_as_handled_and_not_moved_to_the_skipped_queue(int inboxBatchSize)
    {
        await fixture.ResetAsync();
        await using var gateway = await FakePaymentGateway.StartAsync();
        var settings = WorkerSettings.With(gateway);
        settings["Consumers:ChargePayment:InboxBatchSize"] = inboxBatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
        using var duplicates = WorkerMetric.Duplicates(Queue);
        // Declared up front, as MassTransit would declare it for its first skipped message, so it can be counted.
        await fixture.DeclareAsync(Queue + "_skipped");
        await using var worker = await fixture.StartWorkerAsync(settings);
        duplicates.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-dup", AmountMinor = 1_250, Currency = "EUR" };

        await publisher.PublishAsync(payment, Guid.NewGuid());
        await publisher.PublishAsync(payment, Guid.NewGuid());

        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1, duplicates.Count);
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString())).Status);
        });
        await fixture.AssertDrainedAsync(worker, Queue);

        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_skipped"));
        Assert.Equal(1, gateway.RequestsFor(payment.PaymentId.ToString()));
    }
}
