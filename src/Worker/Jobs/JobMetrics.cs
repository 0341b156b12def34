using System.Diagnostics.Metrics;

namespace Conveyor.Worker.Jobs;

/// <summary>The worker's own metrics (meter <c>Conveyor.Worker</c>), beside MassTransit's.</summary>
public static class JobMetrics
{
    public const string MeterName = "Conveyor.Worker";

    private static readonly Meter Meter = new(MeterName);

    private static readonly Counter<long> SucceededCounter =
        Meter.CreateCounter<long>("conveyor.jobs.succeeded", description: "Jobs whose effect committed");

    private static readonly Counter<long> AttemptsFailedCounter =
        Meter.CreateCounter<long>("conveyor.jobs.attempts_failed", description: "Attempts that failed (each retry counts)");

    private static readonly Counter<long> DeadLetteredCounter =
        Meter.CreateCounter<long>("conveyor.jobs.dead_lettered", description: "Jobs moved to the error queue");

    private static readonly Counter<long> RetriesScheduledCounter =
        Meter.CreateCounter<long>("conveyor.jobs.retries_scheduled", description: "Delayed redeliveries stored");

    private static readonly Counter<long> DuplicatesSkippedCounter =
        Meter.CreateCounter<long>("conveyor.inbox.duplicates_skipped", description: "Messages the inbox recognised as already applied");

    private static readonly Histogram<double> DurationHistogram =
        Meter.CreateHistogram<double>("conveyor.jobs.duration", "s", "Time from the start of an attempt to its commit");

    public static Meter Instance => Meter;

    public static void Succeeded(string kind, TimeSpan duration)
    {
        var tag = new KeyValuePair<string, object?>("kind", kind);
        SucceededCounter.Add(1, tag);
        DurationHistogram.Record(duration.TotalSeconds, tag);
    }

    public static void AttemptFailed(string kind) => AttemptsFailedCounter.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public static void DeadLettered(string kind) => DeadLetteredCounter.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public static void RetryScheduled(string kind) => RetriesScheduledCounter.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public static void DuplicateSkipped(string consumer) => DuplicatesSkippedCounter.Add(1, new KeyValuePair<string, object?>("consumer", consumer));
}
