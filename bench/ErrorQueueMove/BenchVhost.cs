using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using Conveyor.Api.ErrorQueues;
using Conveyor.ServiceDefaults;
using RabbitMQ.Client;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// A vhost of the benchmark's own on the broker from <see cref="BenchSettings.Broker"/>, with a
/// management client and a connection to it; created for one run and deleted after it.
/// </summary>
public sealed class BenchVhost
{
    private BenchVhost(string name, RabbitMqOptions broker, HttpClient management, IConnection connection)
    {
        Name = name;
        Broker = broker;
        Management = management;
        Connection = connection;
    }

    public string Name { get; }

    /// <summary>The broker's options with <see cref="RabbitMqOptions.VirtualHost"/> set to this vhost.</summary>
    public RabbitMqOptions Broker { get; }

    public HttpClient Management { get; }

    public IConnection Connection { get; }

    public static async Task<int> RunAsync(BenchSettings settings, string purpose, Func<BenchVhost, Task<int>> run)
    {
        var name = $"conveyor-bench-{purpose}-{Guid.NewGuid():N}"[..30];
        var broker = new RabbitMqOptions
        {
            Host = settings.Broker.Host,
            Port = settings.Broker.Port,
            ManagementPort = settings.Broker.ManagementPort,
            ManagementUrl = settings.Broker.ManagementUrl,
            Username = settings.Broker.Username,
            Password = settings.Broker.Password,
            ConnectTimeoutSeconds = settings.Broker.ConnectTimeoutSeconds,
            VirtualHost = name,
        };
        using var management = new HttpClient
        {
            BaseAddress = broker.ManagementApiAddress(),
            Timeout = TimeSpan.FromSeconds(60),
        };
        management.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue(
            "Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{broker.Username}:{broker.Password}")));

        var vhostUri = new Uri($"vhosts/{Uri.EscapeDataString(name)}", UriKind.Relative);
        (await management.PutAsync(vhostUri, null)).EnsureSuccessStatusCode();
        try
        {
            (await management.PutAsJsonAsync(
                new Uri($"permissions/{Uri.EscapeDataString(name)}/{Uri.EscapeDataString(broker.Username)}", UriKind.Relative),
                new { configure = ".*", write = ".*", read = ".*" })).EnsureSuccessStatusCode();
            await using var connection = await ErrorQueueBroker.ConnectAsync(broker, "bench", CancellationToken.None);
            return await run(new BenchVhost(name, broker, management, connection));
        }
        finally
        {
            await management.DeleteAsync(vhostUri);
        }
    }
}
