using System.Collections.Concurrent;
using System.Diagnostics.Metrics;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// When the Api last read each thing it reports about the broker, as the gauge
/// <c>conveyor.broker.reading_age</c> (seconds, tag <c>reading</c>): <c>job-queues</c> (depths and
/// consumers, <see cref="BrokerPressureMonitor"/>), <c>error-queues</c> (the management API's
/// listing, <c>ErrorQueueDepthMonitor</c>) and <c>alarms</c> (the management API's nodes, also
/// <see cref="BrokerPressureMonitor"/>). Before the first reading the age counts from the start of
/// the process, so an Api that never reaches the broker shows it. The queue gauges themselves go
/// absent once their reading is stale; this one is always there, for the alert that says why.
/// </summary>
public sealed class BrokerReadings
{
    public const string AgeInstrument = "conveyor.broker.reading_age";
    public const string JobQueues = "job-queues";
    public const string ErrorQueues = "error-queues";

    /// <summary>
    /// RabbitMQ's resource alarms. Unread, they count as none (the gate lets submissions try the publish),
    /// so this age is the only sign that the gate's alarm check is off.
    /// </summary>
    public const string Alarms = "alarms";

    private readonly TimeProvider _clock;
    private readonly DateTimeOffset _since;
    private readonly ConcurrentDictionary<string, DateTimeOffset> _readAt = new(StringComparer.Ordinal);

    public BrokerReadings(IMeterFactory meters, TimeProvider clock)
    {
        _clock = clock;
        _since = clock.GetUtcNow();
        meters.Create(ApiApp.ApiMeterName).CreateObservableGauge(
            AgeInstrument,
            () => new[] { JobQueues, ErrorQueues, Alarms }.Select(reading =>
                new Measurement<double>(Age(reading).TotalSeconds, new KeyValuePair<string, object?>("reading", reading))),
            unit: "s",
            description: "Seconds since the Api last read the broker successfully (since its start if never).");
    }

    /// <summary>Records a successful reading of <paramref name="reading"/> now.</summary>
    public void Read(string reading) => _readAt[reading] = _clock.GetUtcNow();

    /// <summary>How long ago <paramref name="reading"/> last succeeded (since the start of the process if never).</summary>
    public TimeSpan Age(string reading) =>
        _clock.GetUtcNow() - (_readAt.TryGetValue(reading, out var at) ? at : _since);
}
