using Conveyor.Contracts;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Redelivery;
using MassTransit;
using System.Diagnostics.Metrics;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// The worker's own metrics (meter <c>Conveyor.Worker</c>), beside MassTransit's. Each instrument states
/// its unit, as OpenTelemetry's conventions ask: seconds (<c>s</c>) or what it counts (<c>{job}</c>,
/// <c>{message}</c>); a count's braces add nothing to its Prometheus name (<c>conveyor_jobs_succeeded_total</c>).
/// </summary>
public static class JobMetrics
{
    public const string MeterName = "Conveyor.Worker";

    private static readonly Meter Meter = new(MeterName);

    private static readonly Counter<long> SucceededCounter =
        Meter.CreateCounter<long>("conveyor.jobs.succeeded", "{job}", "Jobs whose effect committed");

    private static readonly Counter<long> AttemptsFailedCounter =
        Meter.CreateCounter<long>("conveyor.jobs.attempts_failed", "{attempt}", "Attempts that failed (each retry counts)");

    private static readonly Counter<long> DeadLetteredCounter =
        Meter.CreateCounter<long>("conveyor.jobs.dead_lettered", "{job}", "Jobs moved to the error queue");

    private static readonly Counter<long> RetriesScheduledCounter =
        Meter.CreateCounter<long>("conveyor.jobs.retries_scheduled", "{message}", "Delayed redeliveries stored");

    private static readonly Counter<long> DuplicatesSkippedCounter =
        Meter.CreateCounter<long>("conveyor.inbox.duplicates_skipped", "{message}", "Messages the inbox recognised as already applied");

    private static readonly Counter<long> WebhooksSetAsideCounter =
        Meter.CreateCounter<long>("conveyor.webhooks.set_aside", "{delivery}",
            "Webhook deliveries set aside to come back later because their receiver's origin had Webhooks:MaxConcurrentPerOrigin deliveries in flight");

    private static readonly Counter<long> ConflictsCounter =
        Meter.CreateCounter<long>("conveyor.inbox.conflicts", "{message}", "Messages whose key was applied already from a command with other content (dead-lettered)");

    /// <summary>
    /// Bucket bounds for the worker's histograms in seconds, from 5 ms to 2 h (a report may run for up
    /// to half an hour; a backlog may wait longer). OpenTelemetry's default bounds (0, 5, 10, 25, …, 10000)
    /// are made for milliseconds: every job under 5 s would fall in one bucket, and a p99 read from
    /// them could not tell 30 ms from 4.9 s.
    /// </summary>
    public static readonly IReadOnlyList<double> SecondsBuckets =
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200];

    private static readonly Histogram<double> DurationHistogram =
        Meter.CreateHistogram("conveyor.jobs.duration", "s", "Time from the start of an attempt to its commit",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });

    private static readonly Histogram<double> WaitHistogram =
        Meter.CreateHistogram("conveyor.jobs.wait", "s",
            "Time from a command's publish (by the Api or another service) to the start of its first attempt: how long new jobs wait in their queue",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });

    public static Meter Instance => Meter;

    /// <summary>The attempt a job's first claim counts (<c>jobs.attempts</c> starts at 0).</summary>
    private const int FirstAttempt = 1;

    /// <summary>
    /// Returns the attempt's start for <see cref="Succeeded"/>. On a job's first attempt, also records how
    /// long its command waited since it was sent (the publisher's clock: skew between hosts can make it
    /// negative, which counts as 0). Later attempts are left out, as their wait would include the
    /// failures before them. Which attempt this is, <paramref name="job"/>'s <see cref="JobRef.Attempt"/>
    /// (the count its claim left) says: a copy the broker hands out again after an attempt started (a
    /// shutdown or a closed channel cut it off, a worker died in a leased run) looks like a first delivery,
    /// with none of the headers below. The headers still leave out an in-memory retry, a delayed
    /// redelivery and a copy moved back from <c>_error</c> whose earlier attempts went uncounted (a count
    /// that rolled back with the database away, a copy refused before its claim): they keep the first
    /// publish's sent time.
    /// </summary>
    public static long AttemptStarted(JobRef job, ConsumeContext context, TimeProvider time)
    {
        var headers = context.ReceiveContext.TransportHeaders;
        if (job.Attempt == FirstAttempt
            && context.SentTime is { } sent
            && TransientRetryAttempt.Of(context) == 0
            && !headers.TryGetHeader(RedeliveryHeaders.Attempt, out _)
            && !headers.TryGetHeader(RedeliveryHeaders.Deferrals, out _)
            && !headers.TryGetHeader(JobHeaders.MovedFrom, out _))
        {
            var waited = time.GetUtcNow().UtcDateTime - DateTime.SpecifyKind(sent, DateTimeKind.Utc);
            WaitHistogram.Record(Math.Max(0, waited.TotalSeconds), new KeyValuePair<string, object?>("kind", job.Kind));
        }

        return time.GetTimestamp();
    }

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

    public static void WebhookSetAside() => WebhooksSetAsideCounter.Add(1);

    public static void Conflict(string consumer) => ConflictsCounter.Add(1, new KeyValuePair<string, object?>("consumer", consumer));
}
