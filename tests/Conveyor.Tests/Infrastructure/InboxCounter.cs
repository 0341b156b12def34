using System.Diagnostics.Metrics;
using Conveyor.Worker.Jobs;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Counts one of the inbox's counters for one consumer (in-process workers) while it lives.</summary>
public sealed class InboxCounter : IDisposable
{
    private readonly MeterListener _listener = ProcessWide.Listener();
    private int _count;

    private InboxCounter(string name, string consumer)
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == JobMetrics.MeterName && instrument.Name == name)
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

    /// <summary><c>conveyor.inbox.duplicates_skipped</c>: messages acked as applied already.</summary>
    public static InboxCounter Duplicates(string consumer) => new("conveyor.inbox.duplicates_skipped", consumer);

    /// <summary><c>conveyor.inbox.conflicts</c>: messages whose key was applied from other content (ADR 0011).</summary>
    public static InboxCounter Conflicts(string consumer) => new("conveyor.inbox.conflicts", consumer);

    public int Count => Volatile.Read(ref _count);

    public void Dispose() => _listener.Dispose();
}
