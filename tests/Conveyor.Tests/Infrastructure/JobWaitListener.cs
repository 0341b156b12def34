using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Conveyor.Worker.Jobs;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// The measurements of <c>conveyor.jobs.wait</c> (in-process workers) while it lives. The tests that use
/// it run alone (<see cref="AloneCollection"/>), so the measurements it sees during a test are that test's.
/// </summary>
public sealed class JobWaitListener : IDisposable
{
    private readonly MeterListener _listener = ProcessWide.Listener();
    private readonly ConcurrentQueue<(string? Kind, double Seconds)> _waits = new();

    public JobWaitListener()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == JobMetrics.MeterName && instrument.Name == "conveyor.jobs.wait")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<double>((_, seconds, tags, _) =>
        {
            string? kind = null;
            foreach (var tag in tags)
            {
                kind = tag.Key == "kind" ? tag.Value as string : kind;
            }

            _waits.Enqueue((kind, seconds));
        });
        _listener.Start();
    }

    public (string? Kind, double Seconds)[] Recorded => [.. _waits];

    public void Dispose() => _listener.Dispose();
}
