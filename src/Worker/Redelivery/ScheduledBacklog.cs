using System.Diagnostics.Metrics;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// How late the oldest scheduled message (a delayed redelivery or a job scheduled for later) is.
/// It reads the table, not a dispatcher's own state, so it sees a stall whatever its cause (every
/// dispatcher disabled or stuck, the broker refusing). Exposed twice:
/// <list type="bullet">
/// <item>the gauge <c>conveyor.redelivery.overdue</c> (seconds; 0 when nothing is overdue),
/// refreshed in the background so that a scrape never waits on PostgreSQL;</item>
/// <item>the readiness entry <c>scheduled-messages</c>, read afresh on each probe: Degraded past
/// <see cref="DispatcherOptions.OverdueAfterSeconds"/>. Degraded still answers 200, so the worker
/// keeps consuming while the report says what is wrong.</item>
/// </list>
/// </summary>
public sealed partial class ScheduledBacklog : BackgroundService, IHealthCheck
{
    public const string HealthCheckName = "scheduled-messages";
    public const string OverdueInstrument = "conveyor.redelivery.overdue";

    private readonly IDbContextFactory<ConveyorDbContext> _dbFactory;
    private readonly IOptions<DispatcherOptions> _options;
    private readonly TimeProvider _time;
    private readonly ILogger<ScheduledBacklog> _logger;
    private volatile Reading? _reading;
    private bool _failing;

    public ScheduledBacklog(
        IMeterFactory meters,
        IDbContextFactory<ConveyorDbContext> dbFactory,
        IOptions<DispatcherOptions> options,
        TimeProvider time,
        ILogger<ScheduledBacklog> logger)
    {
        _dbFactory = dbFactory;
        _options = options;
        _time = time;
        _logger = logger;
        meters.Create(JobMetrics.MeterName).CreateObservableGauge(
            OverdueInstrument,
            () => _reading is { } reading ? [new Measurement<double>(OverdueBy(reading).TotalSeconds)] : Array.Empty<Measurement<double>>(),
            unit: "s",
            description: "How long past its due time the oldest scheduled message is (0 when none is overdue)");
    }

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var late = OverdueBy(await RefreshAsync(cancellationToken));
        var limit = TimeSpan.FromSeconds(_options.Value.OverdueAfterSeconds);
        return late > limit
            ? HealthCheckResult.Degraded(
                $"Scheduled messages are overdue: the oldest was due {late.TotalSeconds:F0} s ago (more than {limit.TotalSeconds:F0} s); no redelivery dispatcher is publishing them")
            : HealthCheckResult.Healthy(late > TimeSpan.Zero ? $"The oldest scheduled message is {late.TotalSeconds:F0} s past due" : "No scheduled message is overdue");
    }

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Periodically.RunAsync(TimeSpan.FromSeconds(_options.Value.BacklogRefreshSeconds), _time, RefreshQuietlyAsync, stoppingToken);

    private async Task RefreshQuietlyAsync(CancellationToken stoppingToken)
    {
        try
        {
            await RefreshAsync(stoppingToken);
            _failing = false;
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !stoppingToken.IsCancellationRequested)
        {
            // Logged once per outage; the gauge keeps the last reading.
            if (!_failing)
            {
                LogRefreshFailed(exception);
                _failing = true;
            }
        }
    }

    private async Task<Reading> RefreshAsync(CancellationToken cancellationToken)
    {
        await using var db = await _dbFactory.CreateDbContextAsync(cancellationToken);
        var reading = new Reading(await db.ScheduledMessages.MinAsync(s => (DateTimeOffset?)s.DueAt, cancellationToken));
        _reading = reading;
        return reading;
    }

    private TimeSpan OverdueBy(Reading reading)
    {
        var late = reading.OldestDue is { } due ? _time.GetUtcNow() - due : TimeSpan.Zero;
        return late > TimeSpan.Zero ? late : TimeSpan.Zero;
    }

    private sealed record Reading(DateTimeOffset? OldestDue);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not read how late the scheduled messages are; the gauge keeps its last reading")]
    private partial void LogRefreshFailed(Exception exception);
}
