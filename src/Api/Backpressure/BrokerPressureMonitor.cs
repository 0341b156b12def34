using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;
using System.Diagnostics.Metrics;
using System.Text.Json;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// Reads, every <see cref="BackpressureOptions.RefreshMilliseconds"/>, the ready count of each job
/// queue (a passive queue.declare on its own AMQP connection: exact, no statistics lag) and the
/// resource alarms of the cluster (management API <c>GET /api/nodes</c>, fields <c>mem_alarm</c> and
/// <c>disk_free_alarm</c>). Requests read the cached result; a scrape of
/// <c>conveyor.queue.depth</c> or <c>conveyor.queue.consumers</c> (the same declare's consumer count,
/// for alerting on a job queue nobody consumes) never waits on the broker either.
/// </summary>
/// <remarks>
/// A reading older than <see cref="StaleAfter"/> (five refresh periods) describes a broker the Api
/// cannot reach: the two gauges then report nothing (their series go absent, so an alert on them
/// neither fires nor stays frozen on the last value), <see cref="BrokerReadings"/> shows the age, the
/// <c>broker</c> readiness check (<see cref="BrokerHealthCheck"/>) says Unhealthy and the gate
/// ignores the depths (<see cref="BackpressureGate"/>).
/// <para>
/// Alarms come from the management API, not from <c>connection.blocked</c>: RabbitMQ sends that only
/// to a connection once it publishes during an alarm, and then stops reading from it, which would
/// stall the depth readings on this connection too.
/// </para>
/// </remarks>
public sealed class BrokerPressureMonitor : BackgroundService
{
    public const string DepthInstrument = "conveyor.queue.depth";
    public const string ConsumersInstrument = "conveyor.queue.consumers";
    internal const string ManagementClientName = "conveyor-broker-alarms";
    private const int StaleAfterRefreshes = 5;

    private readonly IOptions<BackpressureOptions> _options;
    private readonly RabbitMqOptions _broker;
    private readonly IHttpClientFactory _httpClients;
    private readonly TimeProvider _clock;
    private readonly ILogger<BrokerPressureMonitor> _logger;
    private readonly BrokerReadings _readings;
    private volatile DepthReading? _depths;
    private volatile string[] _alarms = [];
    private IConnection? _connection;
    private IChannel? _channel;
    private bool _depthsFailing;
    private bool _alarmsFailing;
    private volatile string? _lastFailure;

    public BrokerPressureMonitor(
        IMeterFactory meters,
        IOptions<BackpressureOptions> options,
        IOptions<RabbitMqOptions> broker,
        IHttpClientFactory httpClients,
        TimeProvider clock,
        BrokerReadings readings,
        ILogger<BrokerPressureMonitor> logger)
    {
        _readings = readings;
        _options = options;
        _broker = broker.Value;
        _httpClients = httpClients;
        _clock = clock;
        _logger = logger;
        var meter = meters.Create(ApiApp.ApiMeterName);
        meter.CreateObservableGauge(
            DepthInstrument,
            () => PerQueue(FreshReading()?.Depths),
            unit: "{message}",
            description: "Ready messages in each job queue, as the Api last read them; absent while that reading is stale.");
        meter.CreateObservableGauge(
            ConsumersInstrument,
            () => PerQueue(FreshReading()?.Consumers),
            unit: "{consumer}",
            description: "Consumers of each job queue (0 for a queue not declared yet), as the Api last read them; absent while that reading is stale.");
    }

    public BrokerPressure Current => _depths is { } depths
        ? new BrokerPressure(depths.Depths, depths.ReadAt, _alarms)
        : BrokerPressure.Unknown with { Alarms = _alarms };

    /// <summary>The age past which the depths describe a broker the Api cannot reach any more.</summary>
    public TimeSpan StaleAfter => Period * StaleAfterRefreshes;

    /// <summary>Whether the depths have been read at least once since the process started.</summary>
    public bool HasReadDepths => _depths is not null;

    /// <summary>Time since the depths were last read (since the start of the process if never).</summary>
    public TimeSpan DepthsAge => _readings.Age(BrokerReadings.JobQueues);

    /// <summary>Why the latest reading failed (bounded, no secrets); null while readings succeed.</summary>
    public string? LastFailure => _lastFailure;

    private TimeSpan Period => TimeSpan.FromMilliseconds(_options.Value.RefreshMilliseconds);

    private DepthReading? FreshReading() => DepthsAge <= StaleAfter ? _depths : null;

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Task.WhenAll(ReadDepthsAsync(stoppingToken), ReadAlarmsAsync(stoppingToken));

    private async Task ReadDepthsAsync(CancellationToken stoppingToken)
    {
        try
        {
            await Periodically.RunAsync(Period, _clock, RefreshDepthsAsync, stoppingToken);
        }
        finally
        {
            await CloseConnectionAsync();
        }
    }

    private Task ReadAlarmsAsync(CancellationToken stoppingToken) =>
        Periodically.RunAsync(Period, _clock, RefreshAlarmsAsync, stoppingToken);

    private async Task RefreshDepthsAsync(CancellationToken stoppingToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(_broker.ConnectTimeoutSeconds));
        try
        {
            var depths = new Dictionary<string, long>(StringComparer.Ordinal);
            var consumers = new Dictionary<string, long>(StringComparer.Ordinal);
            foreach (var queue in JobKinds.All)
            {
                (depths[queue], consumers[queue]) = await ReadDepthAsync(queue, timeout.Token);
            }

            _depths = new DepthReading(depths, consumers, _clock.GetUtcNow());
            _readings.Read(BrokerReadings.JobQueues);
            _lastFailure = null;
            if (_depthsFailing)
            {
                _depthsFailing = false;
                BackpressureLog.DepthsRecovered(_logger);
            }
        }
        catch (Exception exception) when (!stoppingToken.IsCancellationRequested)
        {
            // Logged once per outage; the readings age out (gate, gauges, readiness) and the connection is rebuilt.
            _lastFailure = HealthReasons.Describe(exception);
            if (!_depthsFailing)
            {
                _depthsFailing = true;
                BackpressureLog.DepthRefreshFailed(_logger, exception);
            }

            await CloseConnectionAsync();
        }
    }

    /// <summary>Ready messages and consumers of <paramref name="queue"/>.</summary>
    private async Task<(long Messages, long Consumers)> ReadDepthAsync(string queue, CancellationToken cancellationToken)
    {
        var channel = await OpenChannelAsync(cancellationToken);
        if (await channel.DeclarePassiveIfExistsAsync(queue, cancellationToken) is { } declared)
        {
            return (declared.MessageCount, declared.ConsumerCount);
        }

        // No queue yet (no worker has declared it): nothing waits, nobody consumes. The broker closed the channel.
        _channel = null;
        await channel.DisposeAsync();
        return (0, 0);
    }

    private async Task<IChannel> OpenChannelAsync(CancellationToken cancellationToken)
    {
        if (_channel is { IsOpen: true } open)
        {
            return open;
        }

        if (_connection is not { IsOpen: true })
        {
            await CloseConnectionAsync();
            // Rebuilt by the next refresh when lost: a reading is never older than one period.
            _connection = await _broker.ConnectAsync("conveyor-api-backpressure", cancellationToken);
        }

        if (_channel is not null)
        {
            await _channel.DisposeAsync();
        }

        _channel = await _connection.CreateChannelAsync(cancellationToken: cancellationToken);
        return _channel;
    }

    private async Task CloseConnectionAsync()
    {
        var channel = _channel;
        var connection = _connection;
        _channel = null;
        _connection = null;
        try
        {
            if (channel is not null)
            {
                await channel.DisposeAsync();
            }

            if (connection is not null)
            {
                await connection.CloseAsync(TimeSpan.FromSeconds(1));
                await connection.DisposeAsync();
            }
        }
        catch (Exception exception)
        {
            BackpressureLog.CloseFailed(_logger, exception);
        }
    }

    private async Task RefreshAlarmsAsync(CancellationToken stoppingToken)
    {
        try
        {
            var http = _httpClients.CreateClient(ManagementClientName);
            using var response = await http.GetAsync(
                new Uri("nodes?columns=name,mem_alarm,disk_free_alarm", UriKind.Relative), stoppingToken);
            response.EnsureSuccessStatusCode();
            await using var body = await response.Content.ReadAsStreamAsync(stoppingToken);
            using var nodes = await JsonDocument.ParseAsync(body, cancellationToken: stoppingToken);
            var alarms = ReadAlarms(nodes.RootElement);

            if (alarms.Length > 0 && _alarms.Length == 0)
            {
                BackpressureLog.PublishersBlocked(_logger, string.Join("; ", alarms));
            }
            else if (alarms.Length == 0 && _alarms.Length > 0)
            {
                BackpressureLog.PublishersUnblocked(_logger);
            }

            _alarms = alarms;
            _readings.Read(BrokerReadings.Alarms);
            _alarmsFailing = false;
        }
        catch (Exception exception) when (!stoppingToken.IsCancellationRequested)
        {
            // Unknown counts as no alarm: a publish into a real alarm still ends in a 503 after
            // RabbitMq:ConnectTimeoutSeconds, it just takes longer. The alarms' reading age grows, so an
            // Api that never reads them (a user without the monitoring tag) shows it beyond this one warning.
            _alarms = [];
            if (!_alarmsFailing)
            {
                _alarmsFailing = true;
                BackpressureLog.AlarmRefreshFailed(_logger, exception);
            }
        }
    }

    private static string[] ReadAlarms(JsonElement nodes)
    {
        var alarms = new List<string>();
        if (nodes.ValueKind != JsonValueKind.Array)
        {
            throw new JsonException("GET /api/nodes did not answer with an array.");
        }

        foreach (var node in nodes.EnumerateArray())
        {
            var name = node.TryGetProperty("name", out var value) && value.ValueKind == JsonValueKind.String
                ? value.GetString()
                : "a node";
            if (IsTrue(node, "mem_alarm"))
            {
                alarms.Add($"memory alarm on {name}");
            }

            if (IsTrue(node, "disk_free_alarm"))
            {
                alarms.Add($"disk alarm on {name}");
            }
        }

        return [.. alarms];
    }

    private static bool IsTrue(JsonElement node, string property) =>
        node.TryGetProperty(property, out var value) && value.ValueKind == JsonValueKind.True;

    private static IEnumerable<Measurement<long>> PerQueue(IReadOnlyDictionary<string, long>? values) =>
        (values ?? new Dictionary<string, long>())
            .Select(v => new Measurement<long>(v.Value, new KeyValuePair<string, object?>("queue", v.Key)));

    private sealed record DepthReading(IReadOnlyDictionary<string, long> Depths, IReadOnlyDictionary<string, long> Consumers, DateTimeOffset ReadAt);
}
