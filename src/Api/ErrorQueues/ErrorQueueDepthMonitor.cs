using System.Diagnostics.Metrics;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// <c>conveyor.error_queue.depth</c> (tag <c>queue</c>) on the <c>Conveyor.Api</c> meter: messages in
/// each <c>_error</c>/<c>_skipped</c> queue, for alerting. Fed from a listing of the management API
/// refreshed in the background, so a metrics scrape never waits on the broker.
/// </summary>
public sealed class ErrorQueueDepthMonitor : BackgroundService
{
    public const string MeterName = ApiApp.ApiMeterName;
    public const string DepthInstrument = "conveyor.error_queue.depth";

    private readonly IServiceScopeFactory _scopes;
    private readonly IOptions<ErrorQueueOptions> _options;
    private readonly TimeProvider _time;
    private readonly ILogger<ErrorQueueDepthMonitor> _logger;
    private volatile IReadOnlyList<QueueStats> _queues = [];
    private bool _failing;

    public ErrorQueueDepthMonitor(
        IMeterFactory meters,
        IServiceScopeFactory scopes,
        IOptions<ErrorQueueOptions> options,
        TimeProvider time,
        ILogger<ErrorQueueDepthMonitor> logger)
    {
        _scopes = scopes;
        _options = options;
        _time = time;
        _logger = logger;
        var meter = meters.Create(MeterName);
        meter.CreateObservableGauge(
            DepthInstrument,
            () => _queues.Select(q => new Measurement<long>(q.Messages, new KeyValuePair<string, object?>("queue", q.Name))),
            unit: "{message}",
            description: "Messages in each _error and _skipped queue of the vhost.");
    }

    /// <summary>The latest listing: error and skipped queues only.</summary>
    public IReadOnlyList<QueueStats> Queues => _queues;

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Periodically.RunAsync(TimeSpan.FromSeconds(_options.Value.DepthRefreshSeconds), _time, RefreshAsync, stoppingToken);

    public async Task RefreshAsync(CancellationToken cancellationToken)
    {
        try
        {
            using var scope = _scopes.CreateScope();
            var management = scope.ServiceProvider.GetRequiredService<RabbitManagementClient>();
            _queues = [.. (await management.QueuesAsync(cancellationToken)).Where(q => ErrorQueueNames.IsErrorOrSkipped(q.Name))];
            _failing = false;
        }
        catch (BrokerUnavailableException exception)
        {
            // Logged once per outage; the gauge keeps the last known depths.
            if (!_failing)
            {
                ErrorQueuesLog.DepthRefreshFailed(_logger, exception);
                _failing = true;
            }
        }
    }
}
