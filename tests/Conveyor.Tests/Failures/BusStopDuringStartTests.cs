using Conveyor.Tests.Infrastructure;
using Conveyor.Worker;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A host stopped while its bus is still connecting (a pod terminated during its start, a test that
/// ends at once) stops its bus. MassTransit's stop, finding no started bus, did nothing ("Not
/// Started") while the start went on; now the stop waits for the start (<c>BusStartGuard</c>). A start
/// that never ends (one queue the broker refuses to declare) while other endpoints already consume is
/// abandoned: those consumed on after the host had stopped, while it tore down what they use.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class BusStopDuringStartTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task An_api_stopped_before_its_bus_connected_leaves_no_connection_open()
    {
        await fixture.ResetAsync();
        // A vhost of its own: a bus left running would show there and touch nothing else.
        await using var vhost = await fixture.ScratchVhostAsync("stopped-starting");
        // The broker behind a relay that holds the handshake: the bus is connecting, not connected.
        await using var broker = await OutageProxy.ToAsync(fixture.Servers.RabbitHost, fixture.Servers.RabbitPort);
        broker.Stall();
        var logs = new CapturedLogs();
        var api = await fixture.StartApiAsync(
            new Dictionary<string, string?>
            {
                ["RabbitMq:VirtualHost"] = vhost.Name,
                ["RabbitMq:Port"] = broker.Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
            },
            builder => builder.Logging.AddProvider(logs));

        // Stopped (as on SIGTERM) while the bus is still connecting; the handshake goes on a moment later.
        var stopped = api.DisposeAsync().AsTask();
        await Task.Delay(TimeSpan.FromSeconds(1));
        broker.Resume();
        await stopped;

        // Long enough for the resumed start to have connected, then for a stop to close it.
        await Task.Delay(TimeSpan.FromSeconds(3));
        await Eventually.AssertAsync(
            async () => Assert.Empty(await fixture.Rabbit.ConnectionsAsync(vhost.Name)), TimeSpan.FromSeconds(10));
        // The stop waited for the start, so MassTransit's stop found a bus to stop.
        Assert.DoesNotContain(logs.Entries, e => e.Message.Contains("Not Started", StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_worker_stopped_while_one_queue_can_never_be_declared_stops_consuming_the_others()
    {
        await fixture.ResetAsync();
        await using var vhost = await fixture.ScratchVhostAsync("stopped-half-started");
        // A queue that exists with an argument the worker does not give: the broker refuses each of its
        // declarations (PRECONDITION_FAILED) and MassTransit retries for ever, so the bus start never
        // ends, while the other endpoints start and consume.
        await using (var connection = await fixture.AmqpFactory(vhost.Name).CreateConnectionAsync("conveyor-tests-declare"))
        await using (var channel = await connection.CreateChannelAsync())
        {
            await channel.QueueDeclareAsync(
                "generate-report", durable: true, exclusive: false, autoDelete: false, new Dictionary<string, object?> { ["x-max-length"] = 1 });
        }

        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in vhost.WorkerSettingsWith())
        {
            settings[key] = value;
        }

        // Not fixture.StartWorkerAsync: that waits for /health/ready, which a bus that never started never gives.
        var worker = await RunningApp.StartAsync(args => WorkerApp.Build(args), settings);
        try
        {
            await Eventually.AssertAsync(
                async () => Assert.Equal(1u, await fixture.ConsumersAsync("charge-payment", vhost.Name)), TimeSpan.FromSeconds(30));
            Assert.Equal(0u, await fixture.ConsumersAsync("generate-report", vhost.Name));
        }
        finally
        {
            // Stopped (as on SIGTERM) with the start still retrying the refused queue.
            await worker.DisposeAsync();
        }

        // Once the host has stopped, nothing of it consumes: a job published now stays in its queue.
        Assert.Equal(0u, await fixture.ConsumersAsync("charge-payment", vhost.Name));
        Assert.Equal(0u, await fixture.ConsumersAsync("deliver-webhook", vhost.Name));
        await using (var producer = await RawAmqpProducer.ConnectAsync(fixture, vhost.Name))
        {
            await producer.PublishEnvelopeAsync(
                "Conveyor.Contracts.Payments:ChargePayment",
                "urn:message:Conveyor.Contracts.Payments:ChargePayment",
                new { paymentId = Guid.NewGuid(), accountId = "acct-half-started", amountMinor = 500, currency = "EUR" });
        }

        // Long enough for a consumer still running to have taken it.
        await Task.Delay(TimeSpan.FromSeconds(3));
        Assert.Equal(1u, await fixture.ReadyAsync("charge-payment", vhost.Name));
        Assert.Equal(0u, await fixture.ConsumersAsync("charge-payment", vhost.Name));
        // The start was abandoned, so its retries (and their connection) ended with the host.
        await Eventually.AssertAsync(
            async () => Assert.Empty(await fixture.Rabbit.ConnectionsAsync(vhost.Name)), TimeSpan.FromSeconds(10));
    }
}
