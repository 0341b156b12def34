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
/// Finds stranded jobs: still <c>queued</c> <see cref="StrandedJobsOptions.StrandedAfterSeconds"/>
/// after their last update while their queue holds no message at all (ready or delivered). Their
/// command was most likely never published: an Api process stopped between the row's commit and
/// the broker's confirm (or could not remove the row after a failed publish), and the client did
/// not repeat the request (ADR 0006). <see cref="StrandedJobRepublisher"/> publishes them again from
/// their stored request (ADR 0007); <c>conveyor.jobs.stranded</c> (tag <c>kind</c>) on the
/// <c>Conveyor.Api</c> meter counts those left over, which need an operator: jobs without a stored
/// request (submitted before it was stored), with a request this version refuses, or whose publish
/// keeps failing.
/// </summary>
/// <remarks>
/// Queue contents come from the management API (its statistics lag by seconds, far less than the
/// threshold). A queue that holds messages is not searched: its old <c>queued</c> jobs are a
/// backlog, and republishing them would double it. Only kinds whose queue is empty are queried, so
/// the queries find few rows or none.
/// </remarks>
public sealed partial class StrandedJobsMonitor : BackgroundService
{
    public const string Instrument = "conveyor.jobs.stranded";

    private readonly IServiceScopeFactory _scopes;
    private readonly StrandedJobRepublisher _republisher;
    private readonly IDbContextFactory<ConveyorDbContext> _dbFactory;
    private readonly IOptions<StrandedJobsOptions> _options;
    private readonly TimeProvider _time;
    private readonly ILogger<StrandedJobsMonitor> _logger;
    private volatile IReadOnlyDictionary<string, long> _stranded = new Dictionary<string, long>();
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
            () => _stranded.Select(s => new Measurement<long>(s.Value, new KeyValuePair<string, object?>("kind", s.Key))),
            unit: "{job}",
            description: "Jobs queued longer than Jobs:StrandedAfterSeconds while their queue holds no message (most likely never published) that the Api could not publish again.");
    }

    /// <summary>The latest counts of stranded jobs left after republishing, per job kind (every kind, 0 when none).</summary>
    public IReadOnlyDictionary<string, long> Stranded => _stranded;

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

            // A queue that does not exist holds nothing either.
            var empty = JobKinds.All.Where(kind => queues.FirstOrDefault(q => q.Name == kind) is not { Messages: > 0 }).ToArray();
            var counts = JobKinds.All.ToDictionary(kind => kind, _ => 0L, StringComparer.Ordinal);
            if (empty.Length > 0)
            {
                var cutoff = _time.GetUtcNow() - TimeSpan.FromSeconds(_options.Value.StrandedAfterSeconds);
                await _republisher.RepublishAsync(empty, cutoff, cancellationToken);
                await using var db = await _dbFactory.CreateDbContextAsync(cancellationToken);
                var found = await db.Jobs.AsNoTracking()
                    .Where(j => j.Status == JobStatus.Queued && empty.Contains(j.Kind) && j.UpdatedAt < cutoff)
                    .GroupBy(j => j.Kind)
                    .Select(g => new { Kind = g.Key, Count = g.LongCount() })
                    .ToListAsync(cancellationToken);
                foreach (var row in found)
                {
                    counts[row.Kind] = row.Count;
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
            _failing = false;
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            // Logged once per outage; the gauge keeps the last counts.
            if (!_failing)
            {
                _failing = true;
                LogCheckFailed(_logger, exception);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Count} {Kind} job(s) have been queued for more than {Seconds} s while their queue holds no message, and could not be published again " +
        "(no stored request, a request this version refuses, or the broker did not confirm; the Api's log says which). " +
        "Repeat each request (the same body publishes it) or cancel the job; list them with GET /api/jobs?status=queued&kind={Kind}")]
    private static partial void LogStranded(ILogger logger, long count, string kind, int seconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not check for stranded jobs; will retry")]
    private static partial void LogCheckFailed(ILogger logger, Exception exception);
}
