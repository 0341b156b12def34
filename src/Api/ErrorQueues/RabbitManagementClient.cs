using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.ErrorQueues;

/// <summary>A queue as RabbitMQ's management API reports it (its counters lag by a few seconds).</summary>
/// <param name="CountsKnown">
/// False when the listing carried no message count (statistics off, a queue just declared, its node
/// down, a quorum queue without a leader): the counts then read 0 without meaning an empty queue.
/// </param>
public sealed record QueueStats(string Name, long Messages, long Ready, long Unacknowledged, int Consumers, bool CountsKnown = true);

/// <summary>The part of RabbitMQ's management HTTP API that error-queue work needs: listing queues.</summary>
public sealed class RabbitManagementClient(HttpClient http, IOptions<RabbitMqOptions> options)
{
    private const string Columns = "name,messages,messages_ready,messages_unacknowledged,consumers";

    public static void Configure(HttpClient http, RabbitMqOptions broker)
    {
        http.BaseAddress = broker.ManagementApiAddress();
        http.Timeout = TimeSpan.FromSeconds(broker.ConnectTimeoutSeconds * 2);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue(
            "Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{broker.Username}:{broker.Password}")));
    }

    public async Task<IReadOnlyList<QueueStats>> QueuesAsync(CancellationToken cancellationToken)
    {
        var vhost = Uri.EscapeDataString(options.Value.VirtualHost);
        using var document = await GetAsync($"queues/{vhost}?columns={Columns}", cancellationToken)
            ?? throw new BrokerUnavailableException($"The management API knows no vhost '{options.Value.VirtualHost}'.");
        if (document.RootElement.ValueKind != JsonValueKind.Array)
        {
            throw new BrokerUnavailableException("The management API's answer was not a list of queues.");
        }

        return [.. document.RootElement.EnumerateArray().Select(Read).OfType<QueueStats>()];
    }

    /// <summary>The queue, or null when it does not exist (or its name cannot be put in the URL, see <see cref="ErrorQueueNames.NameProblem"/>).</summary>
    public async Task<QueueStats?> QueueAsync(string name, CancellationToken cancellationToken)
    {
        if (ErrorQueueNames.NameProblem(name) is not null)
        {
            return null;
        }

        var path = $"queues/{Uri.EscapeDataString(options.Value.VirtualHost)}/{Uri.EscapeDataString(name)}?columns={Columns}";
        using var document = await GetAsync(path, cancellationToken);
        return document is null ? null
            : Read(document.RootElement) ?? throw new BrokerUnavailableException($"The management API's answer for '{name}' was not a queue.");
    }

    private async Task<JsonDocument?> GetAsync(string path, CancellationToken cancellationToken)
    {
        try
        {
            using var response = await http.GetAsync(new Uri(path, UriKind.Relative), cancellationToken);
            if (response.StatusCode == HttpStatusCode.NotFound)
            {
                return null;
            }

            if (!response.IsSuccessStatusCode)
            {
                throw new BrokerUnavailableException($"The management API answered {(int)response.StatusCode}.");
            }

            await using var body = await response.Content.ReadAsStreamAsync(cancellationToken);
            return await JsonDocument.ParseAsync(body, cancellationToken: cancellationToken);
        }
        // SocketException: HttpClient lets some connection failures through unwrapped (a connection reset
        // just after it was made: "Transport endpoint is not connected"); IOException: one cut mid-answer.
        catch (Exception exception) when (exception is HttpRequestException or JsonException or IOException or System.Net.Sockets.SocketException
            || (exception is TaskCanceledException && !cancellationToken.IsCancellationRequested))
        {
            throw new BrokerUnavailableException("The RabbitMQ management API could not be reached.", exception);
        }
    }

    /// <summary>
    /// The queue, or null for an entry that names none. A count that is not a whole number in range (an
    /// answer from something other than RabbitMQ, a proxy's page) reads as absent, as one not yet there does.
    /// </summary>
    private static QueueStats? Read(JsonElement queue)
    {
        if (ManagementQueueJson.Name(queue) is not { } name)
        {
            return null;
        }

        var messages = Long(queue, "messages");
        return new QueueStats(
            name,
            messages ?? 0,
            Long(queue, "messages_ready") ?? 0,
            Long(queue, "messages_unacknowledged") ?? 0,
            (int)Math.Clamp(Long(queue, "consumers") ?? 0, 0, int.MaxValue),
            messages is not null);
    }

    private static long? Long(JsonElement queue, string name) => ManagementQueueJson.Count(queue, name) is >= 0 and var number ? number : null;
}

/// <summary>RabbitMQ (its management API or AMQP port) did not answer.</summary>
public sealed class BrokerUnavailableException : Exception
{
    public BrokerUnavailableException(string message)
        : base(message)
    {
    }

    public BrokerUnavailableException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
