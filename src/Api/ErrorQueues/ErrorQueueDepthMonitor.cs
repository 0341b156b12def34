using System.Diagnostics.Metrics;
using Conveyor.Api.Backpressure;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// <c>conveyor.error_queue.depth</c> (tag <c>queue</c>) on the <c>Conveyor.Api</c> meter: messages in
/// each <c>_error</c>/<c>_skipped</c> queue, for alerting. Fed from a listing of the management API
/// refreshed in the background, so a metrics scrape never waits on the broker. A listing older than
/// three refresh periods is not reported (the series go absent rather than freeze on the last depths
/// through an outage); <c>conveyor.broker.reading_age{reading="error-queues"}</c> says how old it is.
/// A queue the listing gives no count for (<see cref="QueueStats.CountsKnown"/>) has no series either.
/// </summary>
public sealed class ErrorQueueDepthMonitor : BackgroundService
{
    public const string MeterName = ApiApp.ApiMeterName;
    public const string DepthInstrument = "conveyor.error_queue.depth";
    private const int StaleAfterRefreshes = 3;

    private readonly IServiceScopeFactory _scopes;
    private readonly IOptions<ErrorQueueOptions> _options;
    private readonly TimeProvider _time;
    private readonly ILogger<ErrorQueueDepthMonitor> _logger;
    private readonly BrokerReadings _readings;
    private volatile IReadOnlyList<QueueStats> _queues = [];
    private bool _failing;

    public ErrorQueueDepthMonitor(
        IMeterFactory meters,
        IServiceScopeFactory scopes,
        IOptions<ErrorQueueOptions> options,
        TimeProvider time,
        BrokerReadings readings,
        ILogger<ErrorQueueDepthMonitor> logger)
    {
        _readings = readings;
        _scopes = scopes;
        _options = options;
        _time = time;
        _logger = logger;
        var meter = meters.Create(MeterName);
        meter.CreateObservableGauge(
            DepthInstrument,
            // A queue listed without a count may hold any number of messages: no series, rather than a 0
            // that reads as empty to the alerts.
            () => (IsFresh ? _queues : []).Where(q => q.CountsKnown)
                .Select(q => new Measurement<long>(q.Messages, new KeyValuePair<string, object?>("queue", q.Name))),
            unit: "{message}",
            description: "Messages in each _error and _skipped queue of the vhost; absent while the listing is stale, and for a queue listed without a count.");
    }

    /// <summary>The latest listing: error and skipped queues only.</summary>
    public IReadOnlyList<QueueStats> Queues => _queues;

    private bool IsFresh =>
        _readings.Age(BrokerReadings.ErrorQueues) <= TimeSpan.FromSeconds(_options.Value.DepthRefreshSeconds * StaleAfterRefreshes);

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Periodically.RunAsync(TimeSpan.FromSeconds(_options.Value.DepthRefreshSeconds), _time, RefreshAsync, stoppingToken);

    public async Task RefreshAsync(CancellationToken cancellationToken)
    {
        try
        {
            using var scope = _scopes.CreateScope();
            var management = scope.ServiceProvider.GetRequiredService<RabbitManagementClient>();
            _queues = [.. (await management.QueuesAsync(cancellationToken)).Where(q => ErrorQueueNames.IsErrorOrSkipped(q.Name))];
            _readings.Read(BrokerReadings.ErrorQueues);
            _failing = false;
        }
        catch (Exception exception) when (!cancellationToken.IsCancellationRequested)
        {
            // Whatever the failure (an exception escaping here would end the refresh loop for good, and
            // the gauge with it): logged once per outage; the gauge stops reporting once the listing is stale.
            if (!_failing)
            {
                ErrorQueuesLog.DepthRefreshFailed(_logger, exception);
                _failing = true;
            }
        }
    }
}
