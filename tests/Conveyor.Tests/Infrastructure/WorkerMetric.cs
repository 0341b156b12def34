using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Conveyor.Worker.Jobs;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// The measurements of one of the worker's instruments (<see cref="JobMetrics"/>) that the hosts a test
/// <c>Watch</c>es make, while it lives. Each host's <see cref="JobMetrics"/> is on its own meter factory,
/// so what hosts of other lanes measure meanwhile is told apart by its meter's <c>Meter.Scope</c> and left
/// out: a test in any lane may use it. Make it before the host starts and watch the host once it is
/// built; what the host measured in between still counts.
/// </summary>
public sealed class WorkerMetric : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly ConcurrentQueue<(object? Scope, string? Tag, double Value)> _measurements = new();
    private readonly ConcurrentDictionary<object, bool> _watched = new();
    private readonly string _instrument;
    private readonly string? _tagKey;
    private readonly string? _only;

    /// <param name="tagKey">The tag each measurement is recorded with; null for an untagged instrument.</param>
    /// <param name="only">The one value of <paramref name="tagKey"/> to keep; null for every one.</param>
    private WorkerMetric(string instrument, string? tagKey, string? only)
    {
        (_instrument, _tagKey, _only) = (instrument, tagKey, only);
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == JobMetrics.MeterName && instrument.Name == _instrument)
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) => Add(instrument, value, tags));
        _listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) => Add(instrument, value, tags));
        _listener.Start();
    }

    /// <summary><c>conveyor.jobs.retries_scheduled</c>: delayed redeliveries of <paramref name="kind"/> stored.</summary>
    public static WorkerMetric RetriesScheduled(string kind) => new("conveyor.jobs.retries_scheduled", "kind", kind);

    /// <summary><c>conveyor.jobs.succeeded</c>: jobs of <paramref name="kind"/> whose effect committed.</summary>
    public static WorkerMetric Succeeded(string kind) => new("conveyor.jobs.succeeded", "kind", kind);

    /// <summary><c>conveyor.jobs.attempts_failed</c>: attempts at <paramref name="kind"/> that ran and failed.</summary>
    public static WorkerMetric AttemptsFailed(string kind) => new("conveyor.jobs.attempts_failed", "kind", kind);

    /// <summary><c>conveyor.inbox.duplicates_skipped</c>: messages <paramref name="consumer"/> acked as applied already.</summary>
    public static WorkerMetric Duplicates(string consumer) => new("conveyor.inbox.duplicates_skipped", "consumer", consumer);

    /// <summary><c>conveyor.inbox.conflicts</c>: messages to <paramref name="consumer"/> whose key was applied from other content (ADR 0011).</summary>
    public static WorkerMetric Conflicts(string consumer) => new("conveyor.inbox.conflicts", "consumer", consumer);

    /// <summary><c>conveyor.jobs.dead_lettered</c>: jobs of <paramref name="kind"/> marked dead-lettered as their message went to <c>_error</c>.</summary>
    public static WorkerMetric DeadLettered(string kind) => new("conveyor.jobs.dead_lettered", "kind", kind);

    /// <summary>
    /// <c>conveyor.inbox.lease_deferrals_spent</c>: copies to <paramref name="consumer"/> sent to <c>_error</c> unrun after
    /// their most parks behind another run's lease.
    /// </summary>
    public static WorkerMetric LeaseDeferralsSpent(string consumer) => new("conveyor.inbox.lease_deferrals_spent", "consumer", consumer);

    /// <summary><c>conveyor.jobs.wait</c>: how long first attempts waited, each with its kind.</summary>
    public static WorkerMetric Waits() => new("conveyor.jobs.wait", "kind", only: null);

    /// <summary><c>conveyor.redelivery.lateness</c>: how late the dispatcher published each scheduled message (untagged).</summary>
    public static WorkerMetric Lateness() => new("conveyor.redelivery.lateness", tagKey: null, only: null);

    /// <summary>Counts what the host of <paramref name="services"/> measures (and measured since this was made).</summary>
    public void Watch(IServiceProvider services) => _watched[services.GetRequiredService<IMeterFactory>()] = true;

    /// <summary>Counts what is measured on <paramref name="metrics"/>, made without a host (<see cref="HostMeters.OwnJobMetrics"/>).</summary>
    public void Watch(JobMetrics metrics) => _watched[metrics.Meter.Scope!] = true;

    /// <summary>The watched hosts' measurements, each with its tag (kind or consumer), in the order they came.</summary>
    public (string? Tag, double Value)[] Recorded
    {
        get
        {
            if (_watched.IsEmpty)
            {
                // A count of nothing watched would read 0 whatever the worker did.
                throw new InvalidOperationException($"No host is watched for {_instrument}: call Watch with the worker's services");
            }

            return [.. _measurements
                .Where(m => m.Scope is not null && _watched.ContainsKey(m.Scope) && (_only is null || m.Tag == _only))
                .Select(m => (m.Tag, m.Value))];
        }
    }

    /// <summary>The sum of the watched hosts' measurements: for a counter, how many.</summary>
    public int Count => (int)Recorded.Sum(m => m.Value);

    public void Dispose() => _listener.Dispose();

    private void Add(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        string? tag = null;
        foreach (var (key, tagValue) in tags)
        {
            tag = key == _tagKey ? tagValue as string : tag;
        }

        _measurements.Enqueue((instrument.Meter.Scope, tag, value));
    }
}
