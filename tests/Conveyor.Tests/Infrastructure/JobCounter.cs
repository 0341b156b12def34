using System.Diagnostics.Metrics;
using Conveyor.Worker.Jobs;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Counts one of the worker's job counters for one job kind (in-process workers) while it lives.</summary>
public sealed class JobCounter : IDisposable
{
    private readonly MeterListener _listener = ProcessWide.Listener();
    private int _count;

    private JobCounter(string name, string kind)
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
                if (tag.Key == "kind" && kind.Equals(tag.Value as string, StringComparison.Ordinal))
                {
                    Interlocked.Add(ref _count, (int)value);
                }
            }
        });
        _listener.Start();
    }

    /// <summary><c>conveyor.jobs.retries_scheduled</c>: delayed redeliveries stored.</summary>
    public static JobCounter RetriesScheduled(string kind) => new("conveyor.jobs.retries_scheduled", kind);

    /// <summary><c>conveyor.jobs.attempts_failed</c>: attempts that ran and failed.</summary>
    public static JobCounter AttemptsFailed(string kind) => new("conveyor.jobs.attempts_failed", kind);

    public int Count => Volatile.Read(ref _count);

    public void Dispose() => _listener.Dispose();
}
