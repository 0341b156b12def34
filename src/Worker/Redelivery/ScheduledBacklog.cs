using System.Diagnostics.Metrics;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Redelivery;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// How late the oldest scheduled message (a delayed redelivery or a job scheduled for later) is, and
/// which ones the broker keeps refusing. It reads the table, not a dispatcher's own state, so it sees
/// a stall whatever its cause (every dispatcher disabled or stuck, the broker refusing). A refused
/// row's due time moves on with every try, so it counts as due since it was first refused
/// (<see cref="ScheduledMessage.FirstRefusedAt"/>): a row whose queue was deleted is kept for good
/// and, without that, would never look late. Exposed as:
/// <list type="bullet">
/// <item>the gauge <c>conveyor.redelivery.overdue</c> (seconds; 0 when nothing is overdue), and the
/// gauges <c>conveyor.redelivery.refused</c> (rows the broker has refused and that still wait) and
/// <c>conveyor.redelivery.refused_for</c> (seconds since the longest-refused of them was first
/// refused; 0 when none), refreshed in the background so that a scrape never waits on PostgreSQL.
/// They report nothing before the first reading, and nothing once the last one is
/// <see cref="StaleAfterReadings"/> refresh periods old (the table out of reach): the series go
/// stale rather than repeat what may no longer hold. <c>conveyor.redelivery.overdue.read_age</c>
/// (seconds since the last reading; since the start before the first) is always there, for the
/// alert that says the others are missing;</item>
/// <item>the readiness entry <c>scheduled-messages</c>, read afresh on each probe: Degraded past
/// <see cref="DispatcherOptions.OverdueAfterSeconds"/>. Degraded still answers 200, so the worker
/// keeps consuming while the report says what is wrong.</item>
/// </list>
/// </summary>
public sealed partial class ScheduledBacklog : BackgroundService, IHealthCheck
{
    public const string HealthCheckName = "scheduled-messages";
    public const string OverdueInstrument = "conveyor.redelivery.overdue";
    public const string RefusedInstrument = "conveyor.redelivery.refused";
    public const string RefusedForInstrument = "conveyor.redelivery.refused_for";
    public const string ReadAgeInstrument = "conveyor.redelivery.overdue.read_age";

    /// <summary>
    /// Refresh periods a reading may be old before the gauges stop reporting it. More than one, so that one
    /// reading missed (a slow query, a brief blip) does not make the series vanish for a scrape: its
    /// alert's <c>for</c> would start over.
    /// </summary>
    public const int StaleAfterReadings = 3;

    private readonly IDbContextFactory<ConveyorDbContext> _dbFactory;
    private readonly IOptions<DispatcherOptions> _options;
    private readonly TimeProvider _time;
    private readonly ILogger<ScheduledBacklog> _logger;
    private readonly DateTimeOffset _startedAt;
    private volatile Reading? _reading;
    private volatile bool _failing;

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
        _startedAt = time.GetUtcNow();
        var meter = meters.Create(JobMetrics.MeterName);
        meter.CreateObservableGauge(
            OverdueInstrument,
            () => Fresh() is { } reading ? [new Measurement<double>(OverdueBy(reading).TotalSeconds)] : Array.Empty<Measurement<double>>(),
            unit: "s",
            description: "How long past its due time the oldest scheduled message is, a refused one counting from its first refusal (0 when none is overdue)");
        meter.CreateObservableGauge(
            RefusedInstrument,
            () => Fresh() is { } reading ? [new Measurement<long>(reading.Refused)] : Array.Empty<Measurement<long>>(),
            unit: "{message}",
            description: "Scheduled messages the broker did not take (no queue to route to, a failed publish) that wait for another try");
        meter.CreateObservableGauge(
            RefusedForInstrument,
            () => Fresh() is { } reading ? [new Measurement<double>(Since(reading, reading.OldestRefused).TotalSeconds)] : Array.Empty<Measurement<double>>(),
            unit: "s",
            description: "How long the broker has refused the longest-refused scheduled message (0 when none is refused)");
        meter.CreateObservableGauge(
            ReadAgeInstrument,
            () => ReadAge().TotalSeconds,
            unit: "s",
            description: "Seconds since the worker last read the scheduled messages (since its start if never); past "
                + $"{StaleAfterReadings} refresh periods the overdue and refused gauges report nothing");
    }

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var reading = await RefreshAsync(cancellationToken);
        var late = OverdueBy(reading);
        var limit = TimeSpan.FromSeconds(_options.Value.OverdueAfterSeconds);
        var refused = reading.Refused > 0
            ? $"; the broker has refused {reading.Refused} of them for up to {Since(reading, reading.OldestRefused).TotalSeconds:F0} s (is their queue missing?)"
            : string.Empty;
        return late > limit
            ? HealthCheckResult.Degraded(
                $"Scheduled messages are overdue: the oldest was due {late.TotalSeconds:F0} s ago (more than {limit.TotalSeconds:F0} s)"
                + (reading.Refused > 0 ? refused : "; no redelivery dispatcher is publishing them"))
            : HealthCheckResult.Healthy(
                (late > TimeSpan.Zero ? $"The oldest scheduled message is {late.TotalSeconds:F0} s past due" : "No scheduled message is overdue") + refused);
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
            // Logged once per outage; the gauges go on with the last reading until it is stale.
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
        // One round trip; each part reads an index (due_at, and the partial one on first_refused_at).
        // The refused ones are counted between the oldest and the newest refusal, a range the planner
        // cannot know in advance, so it counts them in the partial index: as "first_refused_at IS NOT
        // NULL" alone, a table never analysed (or analysed while small) was scanned whole, every
        // refresh and every health probe, however few messages were refused.
        var row = (await db.Database.SqlQuery<BacklogRow>($"""
            SELECT clock_timestamp() AS database_now, (SELECT MIN(due_at) FROM scheduled_messages) AS oldest_due, b.oldest AS oldest_refused,
                   (SELECT COUNT(*) FROM scheduled_messages WHERE first_refused_at BETWEEN b.oldest AND b.newest) AS refused
              FROM (SELECT MIN(first_refused_at) AS oldest, MAX(first_refused_at) AS newest
                      FROM scheduled_messages WHERE first_refused_at IS NOT NULL) b
            """).ToListAsync(cancellationToken))[0];
        // Due and refusal times are the database's (RedeliveryStore); this pod's clock may be off from it.
        var reading = new Reading(row.OldestDue, row.OldestRefused, row.Refused, row.DatabaseNow, row.DatabaseNow - _time.GetUtcNow());
        _reading = reading;
        return reading;
    }

    /// <summary>How long ago the table was last read, by this pod's clock; since the start if it never was.</summary>
    private TimeSpan ReadAge() => AgeOf(_reading);

    private TimeSpan AgeOf(Reading? reading) => _time.GetUtcNow() - (reading is null ? _startedAt : reading.ReadAt - reading.ClockOffset);

    /// <summary>The last reading, unless it is <see cref="StaleAfterReadings"/> refresh periods old or more.</summary>
    private Reading? Fresh()
    {
        var reading = _reading;
        return reading is not null && AgeOf(reading) < TimeSpan.FromSeconds(_options.Value.BacklogRefreshSeconds * StaleAfterReadings) ? reading : null;
    }

    /// <summary>
    /// How late the oldest message is now, as far as the last reading tells. The gauge reads between two
    /// readings (<see cref="DispatcherOptions.BacklogRefreshSeconds"/> apart, up to an hour), so a message
    /// not yet due when the table was read counts for nothing until a reading finds it still there: it
    /// may well have been published on time since, and counted from its due time, a reading an hour old
    /// reported it an hour overdue, for as long, and fired the overdue alert while every message went
    /// out on time. One overdue when read is overdue since its due time, and stays so until the next reading.
    /// A failed refresh changes nothing here: other workers' dispatchers may still reach the table and publish
    /// (this pod alone cut off), so the reading is not taken further; once stale it is not reported at all.
    /// </summary>
    private TimeSpan OverdueBy(Reading reading)
    {
        var due = reading.OldestDue <= reading.ReadAt ? Since(reading, reading.OldestDue) : TimeSpan.Zero;
        var refused = Since(reading, reading.OldestRefused);
        return due > refused ? due : refused;
    }

    /// <summary>How long ago <paramref name="moment"/> (a database time) was, by the database's clock.</summary>
    private TimeSpan Since(Reading reading, DateTimeOffset? moment)
    {
        var elapsed = moment is { } at ? _time.GetUtcNow() + reading.ClockOffset - at : TimeSpan.Zero;
        return elapsed > TimeSpan.Zero ? elapsed : TimeSpan.Zero;
    }

    /// <param name="ReadAt">When the table was read, by the database's clock.</param>
    /// <param name="ClockOffset">The database's clock minus this pod's, when read.</param>
    private sealed record Reading(DateTimeOffset? OldestDue, DateTimeOffset? OldestRefused, long Refused, DateTimeOffset ReadAt, TimeSpan ClockOffset);

    private sealed class BacklogRow
    {
        public DateTimeOffset DatabaseNow { get; init; }

        public DateTimeOffset? OldestDue { get; init; }

        public DateTimeOffset? OldestRefused { get; init; }

        public long Refused { get; init; }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not read how late the scheduled messages are; the overdue and refused gauges stop reporting once the last reading is stale")]
    private partial void LogRefreshFailed(Exception exception);
}
