using System.Diagnostics.Metrics;
using Conveyor.Api;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Observability;

/// <summary>
/// Every instrument of Conveyor's own meters states its unit, as OpenTelemetry's conventions ask (seconds
/// as <c>s</c>, counts as what they count, <c>{job}</c>): an OTLP backend shows a metric without one as a
/// bare number and cannot tell it from a duration.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class MetricUnitsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Every_instrument_of_the_api_and_the_worker_has_a_unit()
    {
        // Their instruments are created as they start, on each host's meter factory (Meter.Scope): other lanes' are not read.
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var api = await fixture.StartApiAsync();
        object[] scopes = [worker.Services.GetRequiredService<IMeterFactory>(), api.Services.GetRequiredService<IMeterFactory>()];

        var instruments = new List<Instrument>();
        using (var listener = new MeterListener())
        {
            listener.InstrumentPublished = (instrument, _) =>
            {
                if (instrument.Meter.Scope is { } scope && scopes.Contains(scope) && instrument.Meter.Name is JobMetrics.MeterName or ApiApp.ApiMeterName)
                {
                    instruments.Add(instrument);
                }
            };
            listener.Start();
        }

        var names = instruments.Select(i => i.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var expected in new[] { "conveyor.jobs.succeeded", "conveyor.retention.failures", "conveyor.redelivery.refused", "conveyor.queue.depth" })
        {
            Assert.Contains(expected, names);
        }

        var withoutUnit = instruments.Where(i => string.IsNullOrWhiteSpace(i.Unit)).Select(i => i.Name).Distinct().Order(StringComparer.Ordinal).ToList();
        Assert.True(withoutUnit.Count == 0, $"Instruments without a unit: {string.Join(", ", withoutUnit)}");
    }
}
