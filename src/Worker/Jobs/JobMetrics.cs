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
/// One per host (a singleton), on the meter its <see cref="IMeterFactory"/> makes, as the Api's meters are:
/// two hosts in one process (tests, the benchmark) then keep their measurements apart, and a listener can
/// keep to one host's by <see cref="Meter.Scope"/>.
/// </summary>
public sealed class JobMetrics
{
    public const string MeterName = "Conveyor.Worker";

    private readonly Counter<long> _succeeded;
    private readonly Counter<long> _attemptsFailed;
    private readonly Counter<long> _deadLettered;
    private readonly Counter<long> _retriesScheduled;
    private readonly Counter<long> _duplicatesSkipped;
    private readonly Counter<long> _webhooksSetAside;
    private readonly Counter<long> _conflicts;
    private readonly Counter<long> _leaseDeferralsSpent;
    private readonly Histogram<double> _duration;
    private readonly Histogram<double> _wait;

    public JobMetrics(IMeterFactory meters)
    {
        Meter = meters.Create(MeterName);
        _succeeded = Meter.CreateCounter<long>("conveyor.jobs.succeeded", "{job}", "Jobs whose effect committed");
        _attemptsFailed = Meter.CreateCounter<long>("conveyor.jobs.attempts_failed", "{attempt}", "Attempts that failed (each retry counts)");
        _deadLettered = Meter.CreateCounter<long>("conveyor.jobs.dead_lettered", "{job}", "Jobs moved to the error queue");
        _retriesScheduled = Meter.CreateCounter<long>("conveyor.jobs.retries_scheduled", "{message}", "Delayed redeliveries stored");
        _duplicatesSkipped = Meter.CreateCounter<long>(
            "conveyor.inbox.duplicates_skipped", "{message}", "Messages the inbox recognised as already applied");
        _webhooksSetAside = Meter.CreateCounter<long>("conveyor.webhooks.set_aside", "{delivery}",
            "Webhook deliveries set aside to come back later because their receiver's origin had Webhooks:MaxConcurrentPerOrigin deliveries in flight");
        _conflicts = Meter.CreateCounter<long>(
            "conveyor.inbox.conflicts", "{message}", "Messages whose key was applied already from a command with other content (dead-lettered)");
        _leaseDeferralsSpent = Meter.CreateCounter<long>("conveyor.inbox.lease_deferrals_spent", "{message}",
            "Copies of a long job's command sent to the error queue unrun after Consumers:<Name>:MaxLeaseDeferrals parks behind another run's live lease (their job left to that run)");
        _duration = Meter.CreateHistogram("conveyor.jobs.duration", "s", "Time from the start of an attempt to its commit",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
        _wait = Meter.CreateHistogram("conveyor.jobs.wait", "s",
            "Time from a command's publish (by the Api or another service) to the start of its first attempt: how long new jobs wait in their queue",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = SecondsBuckets });
    }

    /// <summary>
    /// Counts 0 on every kind's job counters, so their series exist from the start: Prometheus cannot see what a
    /// series counted before its first sample, and the failure-rate alert (failed / (succeeded + failed) by kind)
    /// drops a kind with no succeeded series, so it stayed silent for a kind whose every attempt failed. Likewise the
    /// lease inbox's count of copies whose parks are spent, for its one endpoint (<c>generate-report</c>, named by its
    /// kind), so that its first such copy is an increase. Called once the host has started its telemetry
    /// (<see cref="JobCounterSeries"/>): a measurement made before a listener subscribed, as in the constructor, which
    /// the hosted services' construction runs, is lost.
    /// </summary>
    public void ExportEveryKind()
    {
        foreach (var kind in JobKinds.All)
        {
            var tag = new KeyValuePair<string, object?>("kind", kind);
            _succeeded.Add(0, tag);
            _attemptsFailed.Add(0, tag);
            _deadLettered.Add(0, tag);
            _retriesScheduled.Add(0, tag);
        }

        _leaseDeferralsSpent.Add(0, new KeyValuePair<string, object?>("consumer", JobKinds.GenerateReport));
    }

    /// <summary>The host's <c>Conveyor.Worker</c> meter, for the instruments other parts of the worker keep.</summary>
    public Meter Meter { get; }

    /// <summary>
    /// Bucket bounds for the worker's histograms in seconds, from 5 ms to 2 h (a report may run for up
    /// to half an hour; a backlog may wait longer). OpenTelemetry's default bounds (0, 5, 10, 25, …, 10000)
    /// are made for milliseconds: every job under 5 s would fall in one bucket, and a p99 read from
    /// them could not tell 30 ms from 4.9 s.
    /// </summary>
    public static readonly IReadOnlyList<double> SecondsBuckets =
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200];

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
    public long AttemptStarted(JobRef job, ConsumeContext context, TimeProvider time)
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
            _wait.Record(Math.Max(0, waited.TotalSeconds), new KeyValuePair<string, object?>("kind", job.Kind));
        }

        return time.GetTimestamp();
    }

    public void Succeeded(string kind, TimeSpan duration)
    {
        var tag = new KeyValuePair<string, object?>("kind", kind);
        _succeeded.Add(1, tag);
        _duration.Record(duration.TotalSeconds, tag);
    }

    public void AttemptFailed(string kind) => _attemptsFailed.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public void DeadLettered(string kind) => _deadLettered.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public void RetryScheduled(string kind) => _retriesScheduled.Add(1, new KeyValuePair<string, object?>("kind", kind));

    public void DuplicateSkipped(string consumer) => _duplicatesSkipped.Add(1, new KeyValuePair<string, object?>("consumer", consumer));

    public void WebhookSetAside() => _webhooksSetAside.Add(1);

    public void Conflict(string consumer) => _conflicts.Add(1, new KeyValuePair<string, object?>("consumer", consumer));

    /// <summary>
    /// A copy gone to <c>_error</c> unrun because its parks behind another run's lease were spent
    /// (<see cref="LeaseDeferralsSpentException"/>). Counted as a conflict is, by consumer, and as nothing else: its job is
    /// the lease's run's, so it counts no failed attempt and no dead-lettered job.
    /// </summary>
    public void LeaseDeferralsSpent(string consumer) => _leaseDeferralsSpent.Add(1, new KeyValuePair<string, object?>("consumer", consumer));
}

/// <summary>
/// Exports every kind's job counters at 0 when the worker starts (<see cref="JobMetrics.ExportEveryKind"/>).
/// Registered after the host's telemetry, whose hosted service starts the meter provider first.
/// </summary>
internal sealed class JobCounterSeries(JobMetrics metrics) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        metrics.ExportEveryKind();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
