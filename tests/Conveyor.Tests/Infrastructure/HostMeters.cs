using System.Diagnostics.Metrics;
using Conveyor.Api;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Redelivery;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Instruments one host made on its own meter factory: no other host in this process reports through
/// them, so a test in any lane may read them (unlike /metrics, see <see cref="ProcessWide"/>).
/// </summary>
public static class HostMeters
{
    /// <summary>
    /// What the observable instrument <paramref name="instrumentName"/> of <paramref name="meterName"/>, made on
    /// <paramref name="meters"/>, reports now: each series' value and tags.
    /// </summary>
    public static IReadOnlyList<(double Value, IReadOnlyDictionary<string, object?> Tags)> Observe(IMeterFactory meters, string meterName, string instrumentName)
    {
        var series = new List<(double, IReadOnlyDictionary<string, object?>)>();
        void Add(double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
        {
            var copied = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var (key, tag) in tags)
            {
                copied[key] = tag;
            }

            series.Add((value, copied));
        }

        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Scope == meters && instrument.Meter.Name == meterName && instrument.Name == instrumentName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<double>((_, value, tags, _) => Add(value, tags));
        listener.SetMeasurementEventCallback<long>((_, value, tags, _) => Add(value, tags));
        listener.SetMeasurementEventCallback<int>((_, value, tags, _) => Add(value, tags));
        listener.Start();
        listener.RecordObservableInstruments();
        return series;
    }

    /// <summary>
    /// The worker's metrics on a meter factory of their own, for a dispatcher or a sweeper a test builds without
    /// a host: a listener keeps to them by their <see cref="JobMetrics.Meter"/>.
    /// </summary>
    public static JobMetrics OwnJobMetrics() =>
        new(new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>());

    /// <summary>The worker's <c>conveyor.redelivery.overdue</c> gauge made on <paramref name="meters"/> (its one series), observed now.</summary>
    public static double OverdueGauge(IMeterFactory meters) =>
        Assert.Single(Observe(meters, JobMetrics.MeterName, ScheduledBacklog.OverdueInstrument)).Value;

    /// <summary>What the Api's gauge <paramref name="instrumentName"/> reports for <paramref name="queue"/> now; null for no such series.</summary>
    public static long? QueueGauge(RunningApp api, string instrumentName, string queue) =>
        Observe(api.Services.GetRequiredService<IMeterFactory>(), ApiApp.ApiMeterName, instrumentName)
            .Where(series => series.Tags.GetValueOrDefault("queue") is string name && name == queue)
            .Select(series => (long?)series.Value)
            .LastOrDefault();
}
