using Conveyor.Tests.Infrastructure;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Conveyor.Tests.Worker;

[Collection(ThirdLaneCollection.Name)]
public sealed class QuorumQueueTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    /// <summary>Every worker here uses the run's database, whatever its vhost: none may find an earlier test's rows.</summary>
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task With_quorum_queues_on_the_worker_declares_its_job_queues_as_quorum_queues()
    {
        // A vhost of its own: RabbitMQ cannot redeclare the run's classic queues as quorum queues.
        await using var vhost = await fixture.ScratchVhostAsync("quorum");
        await using var worker = await fixture.StartWorkerAsync(vhost.WorkerSettingsWith(("RabbitMq:QuorumQueues", "true")));

        foreach (var queue in new[] { "charge-payment", "deliver-webhook", "generate-report" })
        {
            Assert.Equal("quorum", await fixture.Rabbit.QueueTypeAsync(vhost.Name, queue));
        }
    }

    [Fact]
    public async Task With_quorum_queues_on_the_error_and_skipped_queues_stay_classic_and_lazy()
    {
        // Moves and peeks requeue the messages they keep (ADR 0002): a classic queue puts them back in
        // their place, a quorum queue elsewhere and counts each requeue against its delivery limit.
        await using var vhost = await fixture.ScratchVhostAsync("quorum-errors");
        await using var worker = await fixture.StartWorkerAsync(vhost.WorkerSettingsWith(("RabbitMq:QuorumQueues", "true")));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture, vhost.Name);

        // An invalid charge goes to _error, a type nobody consumes to _skipped: MassTransit declares both then.
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new { paymentId = Guid.NewGuid(), accountId = "acct-quorum", amountMinor = -5, currency = "EUR" });
        await producer.PublishEnvelopeAsync(Exchange, "urn:message:Acme.Shipping:ShipOrder", new { orderId = 7 });

        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost.Name, "charge-payment_error"))?.Messages);
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost.Name, "charge-payment_skipped"))?.Messages);
        }, TimeSpan.FromSeconds(30));
        Assert.Equal("quorum", await fixture.Rabbit.QueueTypeAsync(vhost.Name, "charge-payment"));
        foreach (var queue in new[] { "charge-payment_error", "charge-payment_skipped" })
        {
            Assert.True(await fixture.Rabbit.QueueTypeAsync(vhost.Name, queue) == "classic", $"{queue} is {await fixture.Rabbit.QueueTypeAsync(vhost.Name, queue)}");
            Assert.Equal("lazy", (await fixture.Rabbit.QueueModeAsync(vhost.Name, queue)).Argument);
        }
    }

    [Fact]
    public async Task An_error_queue_that_already_is_a_quorum_queue_is_kept_and_still_dead_lettered_into()
    {
        // As an earlier version declared it (a copy of its quorum job queue's arguments): RabbitMQ
        // refuses to redeclare it as a classic queue, which would stop dead-lettering altogether.
        await using var vhost = await fixture.ScratchVhostAsync("quorum-existing");
        await DeclarePlainQuorumAsync(vhost.Name, "charge-payment_error");

        await using var worker = await fixture.StartWorkerAsync(vhost.WorkerSettingsWith(("RabbitMq:QuorumQueues", "true")));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture, vhost.Name);
        var unreadable = RawAmqpProducer.Utf8("{\"messageId\":\"1f0c\",\"message\":{");
        await producer.PublishRawAsync("charge-payment", unreadable, RawAmqpProducer.EnvelopeContentType);
        await producer.PublishRawAsync("deliver-webhook", unreadable, RawAmqpProducer.EnvelopeContentType);

        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost.Name, "charge-payment_error"))?.Messages);
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost.Name, "deliver-webhook_error"))?.Messages);
        }, TimeSpan.FromSeconds(30));
        Assert.Equal("quorum", await fixture.Rabbit.QueueTypeAsync(vhost.Name, "charge-payment_error"));
        // A new one is classic all the same.
        Assert.Equal("classic", await fixture.Rabbit.QueueTypeAsync(vhost.Name, "deliver-webhook_error"));
    }

    [Fact]
    public async Task A_message_returned_past_the_delivery_limit_is_dead_lettered_into_the_error_queue_not_dropped()
    {
        // RabbitMQ 4.0 gives quorum queues a delivery limit of 20 and no dead-letter route: a message
        // a worker requeues while the database is away, or holds when it stops, was dropped after that.
        await using var vhost = await fixture.ScratchVhostAsync("quorum-limit");
        await using (await fixture.StartWorkerAsync(vhost.WorkerSettingsWith(("RabbitMq:QuorumQueues", "true"), ("RabbitMq:QuorumDeliveryLimit", "2"))))
        {
            // The worker declares the queues; it is gone before the message comes.
        }

        Assert.Equal(0, (await fixture.Rabbit.QueueAsync(vhost.Name, "charge-payment_error"))?.Messages ?? 0);
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture, vhost.Name);
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new { paymentId = Guid.NewGuid(), accountId = "acct-limit", amountMinor = 100, currency = "EUR" });

        // A consumer that returns every delivery, as a worker does while the database is away.
        await using var connection = await fixture.AmqpFactory(vhost.Name).CreateConnectionAsync("conveyor-tests-returns");
        await using var channel = await connection.CreateChannelAsync();
        var deliveries = 0;
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += async (_, delivery) =>
        {
            Interlocked.Increment(ref deliveries);
            await channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: true);
        };
        await channel.BasicConsumeAsync("charge-payment", autoAck: false, consumer);

        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost.Name, "charge-payment_error"))?.Messages);
            Assert.Equal(0, (await fixture.Rabbit.QueueAsync(vhost.Name, "charge-payment"))?.Messages);
        }, TimeSpan.FromSeconds(30));
        Assert.InRange(Volatile.Read(ref deliveries), 2, 3);
    }

    [Fact]
    public async Task A_quorum_job_queue_declared_without_the_limit_is_kept_as_it_is_and_consumed()
    {
        // As versions before the limit declared it: the broker refuses to redeclare it with other
        // arguments, which would keep the worker from consuming at all.
        await using var vhost = await fixture.ScratchVhostAsync("quorum-unguarded");
        await DeclarePlainQuorumAsync(vhost.Name, "charge-payment");

        await using var worker = await fixture.StartWorkerAsync(vhost.WorkerSettingsWith(("RabbitMq:QuorumQueues", "true")));

        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost.Name, "charge-payment"))?.Consumers);
            // The others, new, are declared with it.
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost.Name, "deliver-webhook"))?.Consumers);
        }, TimeSpan.FromSeconds(30));
        Assert.Null(await fixture.Rabbit.QueueArgumentAsync(vhost.Name, "charge-payment", "x-delivery-limit"));
        Assert.Equal("1000", await fixture.Rabbit.QueueArgumentAsync(vhost.Name, "deliver-webhook", "x-delivery-limit"));
        Assert.Equal("deliver-webhook_error", await fixture.Rabbit.QueueArgumentAsync(vhost.Name, "deliver-webhook", "x-dead-letter-routing-key"));
    }

    /// <summary>A quorum queue with no other argument, as earlier versions declared some.</summary>
    private async Task DeclarePlainQuorumAsync(string vhost, string queue)
    {
        await using var connection = await fixture.AmqpFactory(vhost).CreateConnectionAsync("conveyor-tests-existing-quorum");
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false,
            new Dictionary<string, object?> { ["x-queue-type"] = "quorum" });
    }
}
