using System.Net.Sockets;
using Conveyor.Api.Backpressure;
using Conveyor.Api.ErrorQueues;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// HttpClient does not wrap every connection failure in an HttpRequestException: a connection reset
/// just after it was made surfaces as a bare SocketException ("Transport endpoint is not connected",
/// seen in a full test run while a test cut the broker off). Escaping the error-queue depth refresh,
/// it ended that background service, and with the host's default behaviour the whole Api stopped.
/// </summary>
public sealed class ManagementClientFailureTests
{
    private static readonly RabbitMqOptions Broker = new() { Host = "127.0.0.1", ManagementPort = 1, VirtualHost = "v", ConnectTimeoutSeconds = 5 };

    [Fact]
    public async Task A_bare_socket_failure_is_an_unavailable_broker()
    {
        var client = new RabbitManagementClient(Http(), Options.Create(Broker));

        var failure = await Assert.ThrowsAnyAsync<Exception>(() => client.QueuesAsync(CancellationToken.None));

        Assert.IsType<BrokerUnavailableException>(failure);
    }

    [Fact]
    public async Task The_error_queue_depth_refresh_survives_any_failure_of_the_management_api()
    {
        var services = new ServiceCollection();
        services.AddScoped(_ => new RabbitManagementClient(Http(), Options.Create(Broker)));
        await using var provider = services.BuildServiceProvider();
        using var meters = new MeterFactory();
        var monitor = new ErrorQueueDepthMonitor(
            meters, provider.GetRequiredService<IServiceScopeFactory>(), Options.Create(new ErrorQueueOptions()),
            TimeProvider.System, new BrokerReadings(meters, TimeProvider.System), NullLogger<ErrorQueueDepthMonitor>.Instance);

        // Twice: failing again after a failure must not end the loop either.
        await monitor.RefreshAsync(CancellationToken.None);
        await monitor.RefreshAsync(CancellationToken.None);

        Assert.Empty(monitor.Queues);
    }

    private static HttpClient Http()
    {
        var http = new HttpClient(new ResetHandler());
        RabbitManagementClient.Configure(http, Broker);
        return http;
    }

    private sealed class ResetHandler : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            throw new SocketException((int)SocketError.NotConnected);
    }

    private sealed class MeterFactory : System.Diagnostics.Metrics.IMeterFactory
    {
        private readonly List<System.Diagnostics.Metrics.Meter> _meters = [];

        public System.Diagnostics.Metrics.Meter Create(System.Diagnostics.Metrics.MeterOptions options)
        {
            var meter = new System.Diagnostics.Metrics.Meter(options);
            _meters.Add(meter);
            return meter;
        }

        public void Dispose() => _meters.ForEach(m => m.Dispose());
    }
}
