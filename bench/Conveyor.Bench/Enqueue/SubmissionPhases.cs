using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Conveyor.Api.Jobs;
using Conveyor.Bench.Infrastructure;

namespace Conveyor.Bench.Enqueue;

/// <summary>
/// Reads the Api's own <see cref="SubmissionMetrics"/> histogram while a round runs: how long the
/// submissions waited for their row's commit and for their command's confirm, the two waits the
/// protocol puts in series. Only that Api host's measurements (its meter factory), in milliseconds.
/// </summary>
public sealed class SubmissionPhases : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly ConcurrentQueue<double> _row = new();
    private readonly ConcurrentQueue<double> _publish = new();

    public SubmissionPhases(IMeterFactory meters)
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Scope == meters && instrument.Name == SubmissionMetrics.InstrumentName)
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<double>((_, seconds, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "phase")
                {
                    (tag.Value as string == "row" ? _row : _publish).Enqueue(seconds * 1000);
                }
            }
        });
        _listener.Start();
    }

    public void Reset()
    {
        _row.Clear();
        _publish.Clear();
    }

    /// <summary>p50 and p99 of each phase since the last <see cref="Reset"/>; null when nothing was recorded (another variant ran).</summary>
    public Phases? Read()
    {
        if (_row.IsEmpty || _publish.IsEmpty)
        {
            return null;
        }

        double[] row = [.. _row.Order()];
        double[] publish = [.. _publish.Order()];
        return new Phases(Stats.Percentile(row, 50), Stats.Percentile(row, 99), Stats.Percentile(publish, 50), Stats.Percentile(publish, 99));
    }

    public void Dispose() => _listener.Dispose();

    public sealed record Phases(double RowP50, double RowP99, double PublishP50, double PublishP99);
}
