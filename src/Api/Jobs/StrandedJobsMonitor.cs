using System.Diagnostics.Metrics;
using Conveyor.Api.ErrorQueues;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Finds stranded jobs: still <c>queued</c> although their command cannot be in their queue (see
/// <see cref="StrandedBeforeAsync"/>: the queue holds no message, or a job published
/// <see cref="StrandedJobsOptions.StrandedAfterSeconds"/> after them has finished). Their command
/// was most likely never published: an Api process stopped between the row's commit and the
/// broker's confirm (or could not remove the row after a failed publish), and the client did not
/// repeat the request (ADR 0006). <see cref="StrandedJobRepublisher"/> publishes them again from
/// their stored request (ADR 0007); <c>conveyor.jobs.stranded</c> (tag <c>kind</c>) on the
/// <c>Conveyor.Api</c> meter counts those left over, which need an operator: jobs without a stored
/// request (submitted before it was stored), with a request this version refuses, or whose publish
/// keeps failing. The gauge goes absent once the last successful check is three periods old.
/// </summary>
/// <remarks>
/// Queue contents come from the management API (its statistics lag by seconds, far less than the
/// threshold). Old <c>queued</c> jobs are not stranded merely by age: in a backlog they wait in
/// order, and republishing them would double it.
/// </remarks>
public sealed partial class StrandedJobsMonitor : BackgroundService
{
    public const string Instrument = "conveyor.jobs.stranded";

    /// <summary>Checks a count may be old before the gauge stops exporting it.</summary>
    private const int StaleAfterChecks = 3;

    private readonly IServiceScopeFactory _scopes;
    private readonly StrandedJobRepublisher _republisher;
    private readonly IDbContextFactory<ConveyorDbContext> _dbFactory;
    private readonly IOptions<StrandedJobsOptions> _options;
    private readonly TimeProvider _time;
    private readonly ILogger<StrandedJobsMonitor> _logger;
    private volatile IReadOnlyDictionary<string, long> _stranded = new Dictionary<string, long>();
    private long _checkedAtTicks;
    private bool _failing;

    public StrandedJobsMonitor(
        IMeterFactory meters,
        IServiceScopeFactory scopes,
        StrandedJobRepublisher republisher,
        IDbContextFactory<ConveyorDbContext> dbFactory,
        IOptions<StrandedJobsOptions> options,
        TimeProvider time,
        ILogger<StrandedJobsMonitor> logger)
    {
        _scopes = scopes;
        _republisher = republisher;
        _dbFactory = dbFactory;
        _options = options;
        _time = time;
        _logger = logger;
        meters.Create(ApiApp.ApiMeterName).CreateObservableGauge(
            Instrument,
            // Absent, not frozen, while this replica cannot check: the alert takes the max over replicas,
            // and a stale count would outvote the fresh ones of the others.
            () => (IsFresh ? _stranded : new Dictionary<string, long>())
                .Select(s => new Measurement<long>(s.Value, new KeyValuePair<string, object?>("kind", s.Key))),
            unit: "{job}",
            description: "Jobs still queued though their command cannot be in their queue (most likely never published) that the Api could not publish again; absent while the last check is stale.");
    }

    /// <summary>The latest counts of stranded jobs left after republishing, per job kind (every kind, 0 when none).</summary>
    public IReadOnlyDictionary<string, long> Stranded => _stranded;

    private bool IsFresh =>
        _time.GetUtcNow() - new DateTimeOffset(Interlocked.Read(ref _checkedAtTicks), TimeSpan.Zero)
            <= TimeSpan.FromSeconds(_options.Value.StrandedCheckSeconds * StaleAfterChecks);

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Periodically.RunAsync(TimeSpan.FromSeconds(_options.Value.StrandedCheckSeconds), _time, RefreshAsync, stoppingToken);

    public async Task RefreshAsync(CancellationToken cancellationToken)
    {
        try
        {
            IReadOnlyList<QueueStats> queues;
            using (var scope = _scopes.CreateScope())
            {
                queues = await scope.ServiceProvider.GetRequiredService<RabbitManagementClient>().QueuesAsync(cancellationToken);
            }

            var now = _time.GetUtcNow();
            var threshold = TimeSpan.FromSeconds(_options.Value.StrandedAfterSeconds);
            await using var db = await _dbFactory.CreateDbContextAsync(cancellationToken);
            var strandedBefore = new Dictionary<string, DateTimeOffset>(StringComparer.Ordinal);
            foreach (var kind in JobKinds.All)
            {
                if (await StrandedBeforeAsync(db, kind, queues, now, threshold, cancellationToken) is { } before)
                {
                    strandedBefore[kind] = before;
                }
            }

            var counts = JobKinds.All.ToDictionary(kind => kind, _ => 0L, StringComparer.Ordinal);
            if (strandedBefore.Count > 0)
            {
                // Claimed again until a claim publishes nothing: the count below is of the jobs that need an
                // operator, so a burst larger than one claim (an Api killed amid many submissions) must not
                // leave jobs that would publish fine in it, with a warning to cancel or repeat them. Every
                // published job is updated now, out of this check's reach, so the claims run out.
                int published;
                do
                {
                    published = await _republisher.RepublishAsync(strandedBefore, cancellationToken);
                }
                while (published > 0);

                foreach (var (kind, before) in strandedBefore)
                {
                    // The kind's queued range of the (kind, status, created_at, id) index; created_at <=
                    // updated_at, so the bound on it keeps a backlog's newer rows out of the range (the
                    // status a literal, as in the claim: the index is partial on the statuses). Rows another
                    // Api's claim holds (FOR UPDATE) are being published, not left over: the weakest row
                    // lock, skipped where it conflicts, leaves them out, and for the statement only.
                    counts[kind] = await db.Database.SqlQuery<long>($"""
                        SELECT count(*) AS "Value" FROM (
                            SELECT 1 FROM jobs j
                             WHERE j.kind = {kind} AND j.status = 'queued' AND j.created_at < {before} AND j.updated_at < {before}
                               FOR KEY SHARE SKIP LOCKED) s
                        """).SingleAsync(cancellationToken);
                }
            }

            foreach (var (kind, count) in counts)
            {
                if (count > 0 && _stranded.GetValueOrDefault(kind) == 0)
                {
                    LogStranded(_logger, count, kind, _options.Value.StrandedAfterSeconds);
                }
            }

            _stranded = counts;
            Interlocked.Exchange(ref _checkedAtTicks, _time.GetUtcNow().UtcTicks);
            _failing = false;
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            // Logged once per outage; the gauge keeps the last counts until they are stale.
            if (!_failing)
            {
                _failing = true;
                LogCheckFailed(_logger, exception);
            }
        }
    }

    /// <summary>
    /// Jobs of <paramref name="kind"/> still <c>queued</c> and last updated before the returned time
    /// are stranded; null when none can be told from a backlog.
    /// <list type="bullet">
    /// <item>Its queue holds no message (ready or delivered; a queue that does not exist holds
    /// none): every job queued longer than the threshold. A queue listed without counts is not
    /// taken for empty; the next rule decides.</item>
    /// <item>Otherwise the queue's order tells: a job submitted through the Api that a worker has
    /// finished was published no earlier than its <c>created_at</c> (a scheduled one later still),
    /// and the queue delivers in order, so a command published a threshold before that (longer than
    /// any submission's publish takes) would have been delivered too. A job still <c>queued</c> that long before the newest such job has no command
    /// in the queue. (Deliveries a worker holds unstarted, behind a job that runs longer than the
    /// threshold, can look stranded too; their copy is a duplicate the inbox skips.)</item>
    /// </list>
    /// </summary>
    private static async Task<DateTimeOffset?> StrandedBeforeAsync(
        ConveyorDbContext db, string kind, IReadOnlyList<QueueStats> queues, DateTimeOffset now, TimeSpan threshold, CancellationToken cancellationToken)
    {
        // Empty only when the broker says so: a count it did not give is not a zero (a backlog whose
        // counts are missing for a moment after a broker restart must not all be published again).
        if (queues.FirstOrDefault(q => q.Name == kind) is not { } queue || queue is { CountsKnown: true, Messages: 0 })
        {
            return now - threshold;
        }

        // The newest one: the kind's succeeded range of the (kind, status, created_at, id) index, read
        // backwards; a day back at most, so a kind that seldom runs does not read every job it has.
        var since = now.AddDays(-1);
        var newestFinished = await db.Jobs
            .Where(j => j.Status == JobStatus.Succeeded && j.CreatedAt > since && j.Kind == kind && j.RequestHash != null)
            .OrderByDescending(j => j.CreatedAt)
            .Select(j => (DateTimeOffset?)j.CreatedAt)
            .FirstOrDefaultAsync(cancellationToken);
        return newestFinished - threshold;
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Count} {Kind} job(s) are still queued although their commands cannot be in the queue (it holds no message, or jobs submitted {Seconds} s after them have finished), and could not be published again " +
        "(no stored request, a request this version refuses, or the broker did not confirm; the Api's log says which). " +
        "Repeat each request (the same body publishes it) or cancel the job; list them with GET /api/jobs?status=queued&kind={Kind}")]
    private static partial void LogStranded(ILogger logger, long count, string kind, int seconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not check for stranded jobs; will retry")]
    private static partial void LogCheckFailed(ILogger logger, Exception exception);
}
