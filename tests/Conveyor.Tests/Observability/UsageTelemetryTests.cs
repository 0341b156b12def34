using Conveyor.Tests.Infrastructure;
using MassTransit;
using MassTransit.UsageTracking;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Observability;

/// <summary>
/// MassTransit 8.4 and later post a description of each bus (host OS and time zone, versions, endpoint names) to
/// usage-tracking.masstransit.io five minutes after it starts, unless told not to. Neither host does: a service
/// sends nothing to a third party unasked (MASSTRANSIT_USAGE_TELEMETRY=true opts in).
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class UsageTelemetryTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Neither_the_api_nor_the_worker_reports_usage_to_masstransit()
    {
        Assert.True(string.IsNullOrEmpty(Environment.GetEnvironmentVariable("MASSTRANSIT_USAGE_TELEMETRY")), "the test's environment opts in");
        await using var api = await fixture.StartApiAsync();
        await using var worker = await fixture.StartWorkerAsync();

        foreach (var host in new[] { api, worker })
        {
            Assert.False(host.Services.GetRequiredService<IOptions<UsageTelemetryOptions>>().Value.Enabled);
            // The tracker, which reads the options (and the variable over them) when it is made, reports only when on.
            var tracker = Assert.IsType<UsageTracker>(host.Services.GetRequiredService<IUsageTracker>());
            Assert.False(tracker.Enabled);
        }
    }
}
