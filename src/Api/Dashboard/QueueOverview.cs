using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Dashboard;

/// <summary>A queue on the dashboard's overview: depth, consumers and the broker's recent rates (messages per second).</summary>
public sealed record QueueOverviewItem(
    string Name, string Kind, string? SourceQueue, long Messages, long Ready, long Unacknowledged, int Consumers,
    double PublishRate, double DeliverRate, double AckRate);

/// <summary>Body of <c>GET /dashboard/api/overview</c>.</summary>
public sealed record QueueOverview(IReadOnlyList<QueueOverviewItem> Queues, DateTimeOffset ReadAt, IReadOnlyList<string> Alarms);

/// <summary>
/// The vhost's durable queues with the management API's rates. The listing is cached for a couple of
/// seconds, so any number of open dashboards cost the broker one request per period.
/// </summary>
public sealed class QueueOverviewSource(IHttpClientFactory httpClients, IOptions<RabbitMqOptions> options, TimeProvider clock) : IDisposable
{
    private const string Columns = "name,auto_delete,messages,messages_ready,messages_unacknowledged,consumers,"
        + "message_stats.publish_details.rate,message_stats.deliver_get_details.rate,message_stats.ack_details.rate";

    public const string HttpClientName = "conveyor-dashboard-overview";

    public static readonly TimeSpan CacheFor = TimeSpan.FromSeconds(2);

    private readonly SemaphoreSlim _refresh = new(1, 1);
    private QueueOverview? _cached;

    public async Task<QueueOverview> ReadAsync(IReadOnlyList<string> alarms, CancellationToken cancellationToken)
    {
        if (Fresh(_cached) is { } cached)
        {
            return cached with { Alarms = alarms };
        }

        await _refresh.WaitAsync(cancellationToken);
        try
        {
            if (Fresh(_cached) is { } other)
            {
                return other with { Alarms = alarms };
            }

            var queues = await ListAsync(cancellationToken);
            _cached = new QueueOverview(queues, clock.GetUtcNow(), alarms);
            return _cached;
        }
        finally
        {
            _refresh.Release();
        }
    }

    public void Dispose() => _refresh.Dispose();

    private QueueOverview? Fresh(QueueOverview? overview) =>
        overview is not null && clock.GetUtcNow() - overview.ReadAt < CacheFor ? overview : null;

    private async Task<IReadOnlyList<QueueOverviewItem>> ListAsync(CancellationToken cancellationToken)
    {
        var vhost = Uri.EscapeDataString(options.Value.VirtualHost);
        try
        {
            using var http = httpClients.CreateClient(HttpClientName);
            using var response = await http.GetAsync(new Uri($"queues/{vhost}?columns={Columns}", UriKind.Relative), cancellationToken);
            if (!response.IsSuccessStatusCode)
            {
                throw new BrokerUnavailableException($"The management API answered {(int)response.StatusCode}.");
            }

            await using var body = await response.Content.ReadAsStreamAsync(cancellationToken);
            using var document = await JsonDocument.ParseAsync(body, cancellationToken: cancellationToken);
            // Anything but the list of queues (another service at that address) is "unavailable", a 503, not a 500.
            if (document.RootElement.ValueKind != JsonValueKind.Array)
            {
                throw new JsonException("GET /api/queues did not answer with an array.");
            }

            return
            [
                .. document.RootElement.EnumerateArray()
                    .Where(q => ManagementQueueJson.Name(q) is not null)
                    // Auto-delete queues are the buses' own reply queues, not work.
                    .Where(q => !(q.TryGetProperty("auto_delete", out var autoDelete) && autoDelete.ValueKind == JsonValueKind.True))
                    .Select(Read)
                    .OrderBy(q => q.Kind == "job" ? 0 : 1)
                    .ThenBy(q => q.Name, StringComparer.Ordinal),
            ];
        }
        catch (Exception exception) when (exception is HttpRequestException or JsonException
            || (exception is TaskCanceledException && !cancellationToken.IsCancellationRequested))
        {
            throw new BrokerUnavailableException("The RabbitMQ management API could not be reached.", exception);
        }
    }

    private static QueueOverviewItem Read(JsonElement queue)
    {
        var name = queue.GetProperty("name").GetString()!;
        var kind = ErrorQueueNames.IsErrorOrSkipped(name) ? ErrorQueueNames.Kind(name)! : "job";
        queue.TryGetProperty("message_stats", out var stats);
        return new QueueOverviewItem(
            name, kind, kind == "job" ? null : ErrorQueueNames.SourceQueueOf(name),
            Long(queue, "messages"), Long(queue, "messages_ready"), Long(queue, "messages_unacknowledged"),
            (int)Math.Min(Long(queue, "consumers"), int.MaxValue),
            Rate(stats, "publish_details"), Rate(stats, "deliver_get_details"), Rate(stats, "ack_details"));
    }

    // Counters and rates appear a moment after a queue is declared, and rates only once something moved. A value
    // of another shape (a count that is no whole number, details that are no object, a rate beyond a double)
    // counts as absent too: it is no reason to show no queue at all, and it threw, answering a 500.
    private static long Long(JsonElement queue, string name) => ManagementQueueJson.Count(queue, name) ?? 0;

    private static double Rate(JsonElement stats, string name) =>
        stats.ValueKind == JsonValueKind.Object
        && stats.TryGetProperty(name, out var details)
        && details.ValueKind == JsonValueKind.Object
        && details.TryGetProperty("rate", out var rate)
        && rate.ValueKind == JsonValueKind.Number
        && rate.TryGetDouble(out var perSecond)
        && double.IsFinite(perSecond)
            ? Math.Round(perSecond, 2)
            : 0;
}
