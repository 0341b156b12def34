using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

[Collection(ConveyorCollection.Name)]
public sealed class InboxTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;
    private TestPublisher _publisher = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
        _worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        _publisher = await TestPublisher.StartAsync(fixture);
    }

    public async Task DisposeAsync()
    {
        await _publisher.DisposeAsync();
        await _worker.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    [Fact]
    public async Task The_same_message_delivered_twenty_times_at_once_charges_once_and_writes_one_ledger_row()
    {
        // Slow answers make the twenty copies overlap inside the worker.
        _gateway.Latency = TimeSpan.FromMilliseconds(200);
        var payment = NewPayment();
        var messageId = Guid.NewGuid();

        await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => _publisher.PublishAsync(payment, messageId)));

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
        });
        await AssertQueueDrainedAsync();

        Assert.Equal(1, _gateway.ChargesFor(payment.PaymentId.ToString()));
        Assert.Equal(1, _gateway.RequestsFor(payment.PaymentId.ToString()));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, await check.Ledger.CountAsync(l => l.PaymentId == payment.PaymentId));
        Assert.Equal(1, await check.Inbox.CountAsync(i => i.MessageKey == payment.PaymentId.ToString()));
    }

    [Fact]
    public async Task The_same_payment_published_twice_with_different_message_ids_has_one_effect()
    {
        var payment = NewPayment();

        await _publisher.PublishAsync(payment, Guid.NewGuid());
        await _publisher.PublishAsync(payment, Guid.NewGuid());

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString())).Status);
        });
        await AssertQueueDrainedAsync();

        Assert.Equal(1, _gateway.ChargesFor(payment.PaymentId.ToString()));
        await using var check = fixture.CreateDbContext();
        var ledger = await check.Ledger.SingleAsync(l => l.PaymentId == payment.PaymentId);
        Assert.Equal(payment.AmountMinor, ledger.AmountMinor);
        Assert.Equal(_gateway.Charges.Single(c => c.IdempotencyKey == payment.PaymentId.ToString()).Id, ledger.GatewayChargeId);
    }

    [Fact]
    public async Task A_payment_from_another_service_gets_a_job_row_that_ends_succeeded()
    {
        var payment = NewPayment();

        await _publisher.PublishAsync(payment);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
            Assert.Equal("charge-payment", job.Kind);
            Assert.Equal(1, job.Attempts);
            Assert.NotNull(job.FinishedAt);
        });
    }

    private async Task AssertQueueDrainedAsync() =>
        await Eventually.AssertAsync(async () =>
        {
            var queue = await fixture.Rabbit.QueueAsync(fixture.VirtualHost, "charge-payment");
            Assert.NotNull(queue);
            Assert.Equal(0, queue.Messages);
        });

    private static ChargePayment NewPayment() => new()
    {
        PaymentId = Guid.NewGuid(),
        AccountId = "acct-inbox",
        AmountMinor = 1250,
        Currency = "EUR",
    };
}
