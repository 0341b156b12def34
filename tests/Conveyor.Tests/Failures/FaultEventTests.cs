using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using RabbitMQ.Client;

namespace Conveyor.Tests.Failures;

/// <summary>
/// MassTransit's <c>Fault&lt;ChargePayment&gt;</c> event, which other services may subscribe to, means the
/// message has failed for good: none for attempts that are retried and end in success, one when the
/// message goes to <c>_error</c>.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class FaultEventTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "charge-payment";
    private const string FaultExchange = "MassTransit:Fault--Conveyor.Contracts.Payments:ChargePayment--";
    private const string Subscriber = "charge-payment-fault-subscriber";

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        // A subscriber of Fault<ChargePayment>, bound as MassTransit binds one (fanout exchange per message type).
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-fault-subscriber");
        await using var channel = await connection.CreateChannelAsync();
        await channel.ExchangeDeclareAsync(FaultExchange, ExchangeType.Fanout, durable: true);
        await channel.QueueDeclareAsync(Subscriber, durable: true, exclusive: false, autoDelete: false);
        await channel.QueueBindAsync(Subscriber, FaultExchange, string.Empty);
    }

    public async Task DisposeAsync()
    {
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-fault-subscriber");
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeleteAsync(Subscriber);
    }

    [Fact]
    public async Task A_job_that_succeeds_after_two_transient_failures_publishes_no_fault()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailNext(2, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = NewPayment();

        await publisher.PublishAsync(payment);

        await WaitForStatusAsync(payment, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(3, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(0u, await fixture.ReadyAsync(Subscriber));
    }

    [Fact]
    public async Task A_job_dead_lettered_after_its_retries_publishes_one_fault()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        // Transient twice (retried in memory), then refused for good.
        gateway.FailNext(2, HttpStatusCode.ServiceUnavailable);
        gateway.FailNext(1, HttpStatusCode.UnprocessableEntity);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = NewPayment();

        await publisher.PublishAsync(payment);

        await WaitForStatusAsync(payment, JobStatus.DeadLettered);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(3, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(1u, await fixture.ReadyAsync(Queue + "_error"));
        Assert.Equal(1u, await fixture.ReadyAsync(Subscriber));
    }

    private static ChargePayment NewPayment() =>
        new() { PaymentId = Guid.NewGuid(), AccountId = "acct-faults", AmountMinor = 2_500, Currency = "EUR" };

    private Task WaitForStatusAsync(ChargePayment payment, string status) =>
        Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(status, (await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString())).Status);
        });
}
