using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>The shutdown timeouts out of their order stop the worker at start, the error naming the settings and their values.</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ShutdownOptionsTests(ConveyorFixture fixture)
{
    [Theory]
    // Also past what MassTransit accepts (its consumer stop within its bus stop): its own refusal named neither setting.
    [InlineData("30", "25", "30", "Shutdown:ConsumerStopTimeoutSeconds (30) must be less than Shutdown:BusStopTimeoutSeconds (25)")]
    [InlineData("25", "25", "30", "Shutdown:ConsumerStopTimeoutSeconds (25) must be less than Shutdown:BusStopTimeoutSeconds (25)")]
    [InlineData("20", "35", "30", "Shutdown:BusStopTimeoutSeconds (35) must not exceed Shutdown:HostShutdownTimeoutSeconds (30)")]
    public async Task Timeouts_out_of_order_stop_the_worker_naming_them(string consumer, string bus, string host, string expected)
    {
        var settings = WorkerSettings.With().Override(
            ("Shutdown:ConsumerStopTimeoutSeconds", consumer), ("Shutdown:BusStopTimeoutSeconds", bus), ("Shutdown:HostShutdownTimeoutSeconds", host));

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartWorkerAsync(settings));

        Assert.Contains(expected, failure.Message, StringComparison.Ordinal);
    }
}
