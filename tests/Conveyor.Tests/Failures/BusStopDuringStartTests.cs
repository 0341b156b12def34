using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A host stopped while its bus is still connecting (a pod terminated during its start, a test that
/// ends at once) stops its bus. MassTransit's stop, finding no started bus, did nothing ("Not
/// Started") while the start went on; now the stop waits for the start (<c>BusStartGuard</c>).
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
}
