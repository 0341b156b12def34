using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

[Collection(ConveyorCollection.Name)]
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
        await using (var connection = await fixture.AmqpFactory(vhost.Name).CreateConnectionAsync("conveyor-tests-existing-quorum"))
        await using (var channel = await connection.CreateChannelAsync())
        {
            await channel.QueueDeclareAsync("charge-payment_error", durable: true, exclusive: false, autoDelete: false,
                new Dictionary<string, object?> { ["x-queue-type"] = "quorum" });
        }

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
}
