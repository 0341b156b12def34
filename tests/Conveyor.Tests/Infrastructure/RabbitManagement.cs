using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Conveyor.ServiceDefaults;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Just enough of RabbitMQ's management HTTP API for tests: vhosts, queue depths, purges.</summary>
public sealed class RabbitManagement : IDisposable
{
    private readonly HttpClient _http;

    /// <summary>The management API of <paramref name="broker"/>, at the address the services use (<see cref="RabbitMqOptions.ManagementApiAddress"/>).</summary>
    public RabbitManagement(RabbitMqOptions broker)
    {
        _http = new HttpClient(new ManagementReadRetry { InnerHandler = new HttpClientHandler() }) { BaseAddress = broker.ManagementApiAddress(), Timeout = TimeSpan.FromSeconds(30) };
        _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue(
            "Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{broker.Username}:{broker.Password}")));
    }

    public async Task CreateVhostAsync(string vhost, string user)
    {
        (await _http.PutAsync($"vhosts/{Uri.EscapeDataString(vhost)}", null)).EnsureSuccessStatusCode();
        (await _http.PutAsJsonAsync($"permissions/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(user)}",
            new { configure = ".*", write = ".*", read = ".*" })).EnsureSuccessStatusCode();
    }

    public async Task DeleteVhostAsync(string vhost) =>
        await _http.DeleteAsync($"vhosts/{Uri.EscapeDataString(vhost)}");

    public async Task<IReadOnlyList<QueueInfo>> QueuesAsync(string vhost)
    {
        var queues = await _http.GetFromJsonAsync<JsonElement>($"queues/{Uri.EscapeDataString(vhost)}?columns=name,messages,messages_ready,messages_unacknowledged,consumers");
        return [.. queues.EnumerateArray().Select(QueueInfo.From)];
    }

    public async Task<QueueInfo?> QueueAsync(string vhost, string queue)
    {
        using var response = await _http.GetAsync($"queues/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(queue)}");
        if (!response.IsSuccessStatusCode)
        {
            return null;
        }

        return QueueInfo.From(await response.Content.ReadFromJsonAsync<JsonElement>());
    }

    /// <summary>
    /// The queue's <c>x-queue-mode</c> argument and the mode its backing queue reports (in its
    /// statistics, which the broker emits every few seconds); nulls when absent.
    /// </summary>
    public async Task<(string? Argument, string? Effective)> QueueModeAsync(string vhost, string queue)
    {
        var info = await _http.GetFromJsonAsync<JsonElement>($"queues/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(queue)}");
        var argument = info.TryGetProperty("arguments", out var arguments) && arguments.ValueKind == JsonValueKind.Object
            && arguments.TryGetProperty("x-queue-mode", out var mode) ? mode.GetString() : null;
        var effective = info.TryGetProperty("backing_queue_status", out var status) && status.ValueKind == JsonValueKind.Object
            && status.TryGetProperty("mode", out var reported) ? reported.GetString() : null;
        return (argument, effective);
    }

    /// <summary>The queue's argument <paramref name="name"/> as text; null when the queue or the argument does not exist.</summary>
    public async Task<string?> QueueArgumentAsync(string vhost, string queue, string name)
    {
        using var response = await _http.GetAsync($"queues/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(queue)}");
        if (!response.IsSuccessStatusCode)
        {
            return null;
        }

        var info = await response.Content.ReadFromJsonAsync<JsonElement>();
        return info.TryGetProperty("arguments", out var arguments) && arguments.ValueKind == JsonValueKind.Object
            && arguments.TryGetProperty(name, out var value) ? value.ToString() : null;
    }

    /// <summary>"classic", "quorum" or "stream"; null when the queue does not exist.</summary>
    public async Task<string?> QueueTypeAsync(string vhost, string queue)
    {
        using var response = await _http.GetAsync($"queues/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(queue)}");
        return response.IsSuccessStatusCode
            ? (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("type").GetString()
            : null;
    }

    /// <summary>The connections open to <paramref name="vhost"/>: the broker's name for each and the name its client gave.</summary>
    public async Task<IReadOnlyList<(string Name, string? ClientName)>> ConnectionsAsync(string vhost)
    {
        var connections = await _http.GetFromJsonAsync<JsonElement>($"vhosts/{Uri.EscapeDataString(vhost)}/connections?columns=name,client_properties");
        return [.. connections.EnumerateArray().Select(c => (
            c.GetProperty("name").GetString()!,
            c.TryGetProperty("client_properties", out var client) && client.ValueKind == JsonValueKind.Object
                && client.TryGetProperty("connection_name", out var given) ? given.GetString() : null))];
    }

    /// <summary>Closes a connection as an operator would, with <paramref name="reason"/>; one already gone is no error.</summary>
    public async Task CloseConnectionAsync(string name, string reason)
    {
        using var request = new HttpRequestMessage(HttpMethod.Delete, $"connections/{Uri.EscapeDataString(name)}");
        request.Headers.Add("X-Reason", reason);
        using var response = await _http.SendAsync(request);
        if (response.StatusCode != HttpStatusCode.NotFound)
        {
            response.EnsureSuccessStatusCode();
        }
    }

    /// <summary>Empties <paramref name="queue"/>; one that no longer exists (a stopped bus's temporary queue) has nothing to empty.</summary>
    public async Task PurgeAsync(string vhost, string queue)
    {
        using var response = await _http.DeleteAsync($"queues/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(queue)}/contents");
        if (response.StatusCode != HttpStatusCode.NotFound)
        {
            response.EnsureSuccessStatusCode();
        }
    }

    public void Dispose() => _http.Dispose();
}

/// <summary>A vhost made for one test (<see cref="ConveyorFixture.ScratchVhostAsync"/>); deleted on dispose.</summary>
public sealed class ScratchVhost(string name, RabbitManagement rabbit) : IAsyncDisposable
{
    public string Name { get; } = name;

    /// <summary><see cref="WorkerSettings.With"/> for a worker in this vhost, with <paramref name="overrides"/>.</summary>
    public Dictionary<string, string?> WorkerSettingsWith(params (string Key, string Value)[] overrides) =>
        WorkerSettings.With().Override(("RabbitMq:VirtualHost", Name)).Override(overrides);

    public async ValueTask DisposeAsync() => await rabbit.DeleteVhostAsync(Name);
}

/// <summary>
/// A queue as the management API last sampled it (every few seconds): figures lag behind the queue,
/// and are null until the first sample after the queue was declared, never 0 for "not known". For an
/// exact count at the moment of asking, see <see cref="BrokerQueues"/>.
/// </summary>
public sealed record QueueInfo(string Name, long? Messages, long? Ready, long? Unacked, int? Consumers)
{
    public static QueueInfo From(JsonElement queue) => new(
        queue.GetProperty("name").GetString()!,
        Long(queue, "messages"),
        Long(queue, "messages_ready"),
        Long(queue, "messages_unacknowledged"),
        (int?)Long(queue, "consumers"));

    private static long? Long(JsonElement queue, string name) =>
        queue.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Number ? value.GetInt64() : null;
}
