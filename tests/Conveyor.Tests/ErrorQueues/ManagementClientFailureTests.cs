using System.Diagnostics.Metrics;
using System.Net.Sockets;
using Conveyor.Api.Backpressure;
using Conveyor.Api.ErrorQueues;
using Conveyor.ServiceDefaults;
using Conveyor.Tests.Infrastructure;
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
        services.AddMetrics();
        await using var provider = services.BuildServiceProvider();
        var meters = provider.GetRequiredService<IMeterFactory>();
        var monitor = new ErrorQueueDepthMonitor(
            meters, provider.GetRequiredService<IServiceScopeFactory>(), Options.Create(new ErrorQueueOptions()),
            TimeProvider.System, new BrokerReadings(meters, TimeProvider.System), NullLogger<ErrorQueueDepthMonitor>.Instance);

        // Twice: failing again after a failure must not end the loop either.
        await monitor.RefreshAsync(CancellationToken.None);
        await monitor.RefreshAsync(CancellationToken.None);

        Assert.Empty(monitor.Queues);
    }

    [Theory]
    [InlineData("""[{"name":"a_error","messages":2.5,"messages_ready":1e30,"messages_unacknowledged":-1,"consumers":99999999999}]""", int.MaxValue)]
    [InlineData("""[{"name":"a_error","messages":"7","messages_ready":null,"messages_unacknowledged":{},"consumers":[]}]""", 0)]
    public async Task A_count_that_is_not_a_whole_number_in_range_reads_as_unknown(string answer, int consumers)
    {
        var client = new RabbitManagementClient(Http(new AnswerHandler(answer)), Options.Create(Broker));

        var queue = Assert.Single(await client.QueuesAsync(CancellationToken.None));

        Assert.Equal(new QueueStats("a_error", 0, 0, 0, consumers, CountsKnown: false), queue);
        Assert.Equal(queue, await client.QueueAsync("a_error", CancellationToken.None));
    }

    [Fact]
    public async Task Entries_that_name_no_queue_are_left_out_of_the_listing()
    {
        var client = new RabbitManagementClient(
            Http(new AnswerHandler("""[5, null, {"messages":1}, {"name":7}, {"name":"b_error","messages":3,"consumers":1}]""")), Options.Create(Broker));

        var queue = Assert.Single(await client.QueuesAsync(CancellationToken.None));

        Assert.Equal(new QueueStats("b_error", 3, 0, 0, 1), queue);
    }

    /// <summary>
    /// A queue the management API lists without a count (statistics off, a queue just declared, its node
    /// down, a quorum queue without a leader) may hold any number of messages: exported as 0, the gauge
    /// told the error-queue alerts that a full <c>_error</c> queue was empty. It is left out instead, as
    /// a stale listing is, while the queues whose counts are known keep their series.
    /// </summary>
    [Fact]
    public async Task An_error_queue_listed_without_a_count_has_no_depth_series_rather_than_0()
    {
        var services = new ServiceCollection();
        services.AddScoped(_ => new RabbitManagementClient(
            Http(new AnswerHandler("""[{"name":"a_error","consumers":0},{"name":"b_error","messages":4,"consumers":0},{"name":"c_skipped","messages":0,"consumers":0}]""")),
            Options.Create(Broker)));
        services.AddMetrics();
        await using var provider = services.BuildServiceProvider();
        var meters = provider.GetRequiredService<IMeterFactory>();
        var readings = new BrokerReadings(meters, TimeProvider.System);
        var monitor = new ErrorQueueDepthMonitor(
            meters, provider.GetRequiredService<IServiceScopeFactory>(), Options.Create(new ErrorQueueOptions()),
            TimeProvider.System, readings, NullLogger<ErrorQueueDepthMonitor>.Instance);

        await monitor.RefreshAsync(CancellationToken.None);

        var depths = HostMeters.Observe(meters, ErrorQueueDepthMonitor.MeterName, ErrorQueueDepthMonitor.DepthInstrument)
            .ToDictionary(series => (string)series.Tags["queue"]!, series => (long)series.Value, StringComparer.Ordinal);

        Assert.Equal(new Dictionary<string, long> { ["b_error"] = 4, ["c_skipped"] = 0 }, depths);
    }

    [Theory]
    [InlineData("""{"error":"not_authorised"}""")]
    [InlineData("""
        "queues"
        """)]
    [InlineData("42")]
    public async Task An_answer_that_is_not_a_list_or_a_queue_is_an_unavailable_broker(string answer)
    {
        var client = new RabbitManagementClient(Http(new AnswerHandler(answer)), Options.Create(Broker));

        await Assert.ThrowsAsync<BrokerUnavailableException>(() => client.QueuesAsync(CancellationToken.None));
        await Assert.ThrowsAsync<BrokerUnavailableException>(() => client.QueueAsync("a_error", CancellationToken.None));
    }

    private static HttpClient Http(HttpMessageHandler? handler = null)
    {
        var http = new HttpClient(handler ?? new ResetHandler());
        RabbitManagementClient.Configure(http, Broker);
        return http;
    }

    /// <summary>Answers every request with <c>json</c>; a single queue's request with the listing's first entry, as RabbitMQ would.</summary>
    private sealed class AnswerHandler(string json) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var body = request.RequestUri!.AbsolutePath.EndsWith("/a_error", StringComparison.Ordinal) && json.StartsWith('[')
                ? System.Text.Json.JsonDocument.Parse(json).RootElement[0].GetRawText()
                : json;
            return Task.FromResult(new HttpResponseMessage(System.Net.HttpStatusCode.OK)
            {
                Content = new StringContent(body, System.Text.Encoding.UTF8, "application/json"),
            });
        }
    }

    private sealed class ResetHandler : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            throw new SocketException((int)SocketError.NotConnected);
    }
}
