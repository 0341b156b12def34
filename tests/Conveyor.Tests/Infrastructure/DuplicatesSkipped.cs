using System.Diagnostics.Metrics;
using Conveyor.Worker.Jobs;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Counts <c>conveyor.inbox.duplicates_skipped</c> of one consumer (in-process workers) while it lives.</summary>
public sealed class DuplicatesSkipped : IDisposable
{
    private readonly MeterListener _listener = new();
    private int _count;

    public DuplicatesSkipped(string consumer)
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == JobMetrics.MeterName && instrument.Name == "conveyor.inbox.duplicates_skipped")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "consumer" && consumer.Equals(tag.Value as string, StringComparison.Ordinal))
                {
                    Interlocked.Add(ref _count, (int)value);
                }
            }
        });
        _listener.Start();
    }

    public int Count => Volatile.Read(ref _count);

    public void Dispose() => _listener.Dispose();
}
