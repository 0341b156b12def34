using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Where a job submission's time goes, by the two waits the protocol puts in series: the commit of
/// its row (<c>phase=row</c>, group commit included) and the broker's confirm of its command
/// (<c>phase=publish</c>). One histogram, <c>conveyor.api.submission.duration</c> (Prometheus
/// <c>conveyor_api_submission_duration_seconds</c>), tagged with the kind and the outcome, so a slow
/// database and a slow or stalling broker can be told apart without a profiler. Beside it,
/// <c>conveyor.api.batch.jobs</c>: how many jobs each batch that passed validation held.
/// </summary>
public sealed class SubmissionMetrics
{
    public const string InstrumentName = "conveyor.api.submission.duration";

    private static readonly double[] Buckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    public const string BatchInstrumentName = "conveyor.api.batch.jobs";

    private static readonly int[] BatchBuckets = [1, 2, 5, 10, 25, 50, 100];

    private readonly Histogram<double> _duration;
    private readonly Histogram<int> _batchJobs;

    public SubmissionMetrics(IMeterFactory meters)
    {
        var meter = meters.Create(ApiApp.ApiMeterName);
        _batchJobs = meter.CreateHistogram(
            BatchInstrumentName,
            unit: "{job}",
            description: "Jobs in each batch submission that passed validation (outcome accepted: every job; partial: some were refused)",
            advice: new InstrumentAdvice<int> { HistogramBucketBoundaries = BatchBuckets });
        _duration = meter.CreateHistogram(
            InstrumentName,
            unit: "s",
            description: "Time a job submission waited for its row's commit (phase=row) and for its command's confirm (phase=publish)",
            advice: new InstrumentAdvice<double> { HistogramBucketBoundaries = Buckets });
    }

    /// <param name="outcome"><c>inserted</c>, <c>exists</c> (a unique key was taken) or <c>failed</c>.</param>
    public void Row(string kind, long startedAt, string outcome) => Record(kind, "row", outcome, startedAt);

    /// <param name="outcome"><c>confirmed</c> or <c>failed</c> (not confirmed within the budget).</param>
    public void Publish(string kind, long startedAt, string outcome) => Record(kind, "publish", outcome, startedAt);

    /// <param name="outcome"><c>accepted</c> (every job) or <c>partial</c> (some were refused: 409, 422, 503).</param>
    public void Batch(string kind, int jobs, string outcome) =>
        _batchJobs.Record(jobs, new KeyValuePair<string, object?>("kind", kind), new KeyValuePair<string, object?>("outcome", outcome));

    private void Record(string kind, string phase, string outcome, long startedAt) =>
        _duration.Record(
            Stopwatch.GetElapsedTime(startedAt).TotalSeconds,
            new KeyValuePair<string, object?>("kind", kind),
            new KeyValuePair<string, object?>("phase", phase),
            new KeyValuePair<string, object?>("outcome", outcome));
}
