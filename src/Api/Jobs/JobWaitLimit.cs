using System.ComponentModel.DataAnnotations;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Jobs;

/// <summary>Settings of the waits of <c>GET /api/jobs/{jobId}?waitSeconds=</c> (section <c>Jobs</c>).</summary>
public sealed class JobWaitOptions
{
    /// <summary>
    /// The most <c>GET /api/jobs/{jobId}?waitSeconds=</c> requests one Api holds at once while their jobs have not ended
    /// (environment variable <c>Jobs__MaxConcurrentWaits</c>). Each reads its job's row about once a second and holds a
    /// request open, so this bounds what waiting clients cost the Api and the database (100: about 100 short reads a
    /// second per Api). A wait asked for beyond it is not refused: it is answered at once with the job as it is, as for
    /// <c>waitSeconds=0</c>, and the header <see cref="JobWaitLimit.SkippedHeader"/>: <see cref="JobWaitLimit.TooManyWaits"/>
    /// says so; a client that loops should pause (a second) before it asks again.
    /// </summary>
    [Range(1, 100_000)]
    public int MaxConcurrentWaits { get; set; } = 100;
}

/// <summary>
/// The Api's count of <c>GET /api/jobs/{jobId}?waitSeconds=</c> requests holding their answer, bounded by
/// <see cref="JobWaitOptions.MaxConcurrentWaits"/>: a wait takes a slot (<see cref="TryEnter"/>) once its first read
/// found the job not ended, and gives it back however it ends (disposing the slot). The gauge
/// <c>conveyor.api.job.waits</c> (Prometheus <c>conveyor_api_job_waits</c>) reads the count; the counter
/// <c>conveyor.api.job.waits.skipped</c> (<c>conveyor_api_job_waits_skipped_total</c>) counts waits answered at once
/// because every slot was taken.
/// </summary>
public sealed class JobWaitLimit
{
    /// <summary>The response header of a wait answered at once because the Api held as many as it allows.</summary>
    public const string SkippedHeader = "Conveyor-Wait-Skipped";

    /// <summary>The value of <see cref="SkippedHeader"/>: every slot was taken (<see cref="JobWaitOptions.MaxConcurrentWaits"/>).</summary>
    public const string TooManyWaits = "too-many-waits";

    public const string InstrumentName = "conveyor.api.job.waits";
    public const string SkippedInstrumentName = "conveyor.api.job.waits.skipped";

    private readonly IOptions<JobWaitOptions> _options;
    private readonly Counter<long> _skipped;
    private int _count;

    /// <remarks>Reads its options at the first wait, not here: the Api makes it before it starts (<see cref="JobsApi.MapJobsApi"/>), and the options are validated as it starts.</remarks>
    public JobWaitLimit(IOptions<JobWaitOptions> options, IMeterFactory meters)
    {
        _options = options;
        var meter = meters.Create(ApiApp.ApiMeterName);
        meter.CreateObservableUpDownCounter(InstrumentName, () => Current, unit: "{request}",
            description: "GET /api/jobs/{jobId}?waitSeconds= requests holding their answer while their job has not ended (at most Jobs:MaxConcurrentWaits)");
        _skipped = meter.CreateCounter<long>(SkippedInstrumentName, unit: "{request}",
            description: "Waits answered at once with the job as it is because Jobs:MaxConcurrentWaits were held already");
        // From the start, at 0: a rate over a series that appears with its first skip misses that skip.
        _skipped.Add(0);
    }

    /// <summary>Waits held now (for tests and diagnostics).</summary>
    public int Current => Volatile.Read(ref _count);

    /// <summary>A slot for one wait, to dispose when it ends; null when all are taken (the skip is counted).</summary>
    internal Slot? TryEnter()
    {
        var max = _options.Value.MaxConcurrentWaits;
        var current = Volatile.Read(ref _count);
        while (current < max)
        {
            var seen = Interlocked.CompareExchange(ref _count, current + 1, current);
            if (seen == current)
            {
                return new Slot(this);
            }

            current = seen;
        }

        _skipped.Add(1);
        return null;
    }

    /// <summary>One wait's place in the count; disposing it (once or more) gives it back.</summary>
    internal sealed class Slot(JobWaitLimit waits) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                Interlocked.Decrement(ref waits._count);
            }
        }
    }
}
