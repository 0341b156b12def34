using System.Diagnostics.Metrics;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Instruments one host made on its own meter factory: no other host in this process reports through
/// them, so a test in either lane may read them (unlike /metrics, see <see cref="ProcessWide"/>).
/// </summary>
public static class HostMeters
{
    /// <summary>What the observable instrument <paramref name="instrumentName"/> of <paramref name="meterName"/>, made on <paramref name="meters"/>, reports now: one value per series.</summary>
    public static IReadOnlyList<double> Observe(IMeterFactory meters, string meterName, string instrumentName)
    {
        var values = new List<double>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Scope == meters && instrument.Meter.Name == meterName && instrument.Name == instrumentName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<double>((_, value, _, _) => values.Add(value));
        listener.SetMeasurementEventCallback<long>((_, value, _, _) => values.Add(value));
        listener.SetMeasurementEventCallback<int>((_, value, _, _) => values.Add(value));
        listener.Start();
        listener.RecordObservableInstruments();
        return values;
    }
}
