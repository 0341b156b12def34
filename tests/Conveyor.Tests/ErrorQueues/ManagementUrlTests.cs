using System.Globalization;
using System.Text.Json;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// An Api whose management API is not at <c>http://Host:ManagementPort/</c> (TLS, an ingress's path
/// prefix) reads it through <c>RabbitMq:ManagementUrl</c>: the error-queue listing and the alarm check
/// both go there, under its path.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class ManagementUrlTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task The_error_queue_listing_reads_the_broker_through_an_explicit_management_url()
    {
        await using (var broker = await TestBroker.ConnectAsync(fixture))
        {
            await broker.DeadLetterChargeAsync("System.TimeoutException", "The gateway timed out");
        }

        var managementPort = fixture.RabbitOptions().ManagementPort.ToString(CultureInfo.InvariantCulture);
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:ManagementUrl"] = $"http://127.0.0.1:{managementPort}",
            // Nothing listens there: only the URL reaches the management API.
            ["RabbitMq:ManagementPort"] = "1",
        });

        await Eventually.AssertAsync(async () =>
        {
            var queues = await ErrorQueuesAsync(api);
            Assert.Equal(1, Assert.Contains(ErrorQueueKit.ChargeErrors, queues).GetProperty("messages").GetInt64());
        });
    }

    [Theory]
    [InlineData("/rabbitmq")]
    [InlineData("/rabbitmq/")]
    public async Task The_Api_sends_its_management_requests_under_the_path_of_the_management_url(string path)
    {
        // An ingress publishing the management API at /rabbitmq/: nothing answers at /api/. The queue it lists
        // is on the broker, where the listing reads its counts.
        await using (var broker = await TestBroker.ConnectAsync(fixture))
        {
            await broker.DeclareAsync(ErrorQueueKit.ChargeErrors);
        }

        await using var management = await FakeRabbitManagement.StartAsync(pathPrefix: "/rabbitmq");
        management.Queues = [new() { ["name"] = ErrorQueueKit.ChargeErrors, ["messages"] = 7, ["consumers"] = 0 }];
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:ManagementUrl"] = $"http://127.0.0.1:{management.Port.ToString(CultureInfo.InvariantCulture)}{path}",
            ["Backpressure:RefreshMilliseconds"] = "200",
        });

        await Eventually.AssertAsync(async () =>
        {
            // The listing names the queues the management API lists (their counts are then read from the broker).
            var queues = await ErrorQueuesAsync(api);
            Assert.Contains(ErrorQueueKit.ChargeErrors, queues.Keys);
            Assert.Contains(management.RequestPaths, requested => requested.StartsWith("/rabbitmq/api/queues/", StringComparison.Ordinal));
            // The alarm check (its own HttpClient) reads there too.
            Assert.Contains("/rabbitmq/api/nodes", management.RequestPaths);
        });
        Assert.All(management.RequestPaths, requested => Assert.StartsWith("/rabbitmq/api/", requested, StringComparison.Ordinal));
    }

    /// <summary>
    /// The counts are read from the broker itself over AMQP; should that fail while the management API answers,
    /// the operator still gets the listing, with the management API's (lagging) counts, not a 503.
    /// </summary>
    [Fact]
    public async Task The_listing_gives_the_management_apis_counts_when_the_broker_cannot_be_asked_for_its_own()
    {
        await using var management = await FakeRabbitManagement.StartAsync();
        management.Queues =
        [
            new() { ["name"] = ErrorQueueKit.ChargeErrors, ["messages"] = 7, ["messages_ready"] = 5, ["messages_unacknowledged"] = 2, ["consumers"] = 1 },
        ];
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:ManagementUrl"] = $"http://127.0.0.1:{management.Port.ToString(CultureInfo.InvariantCulture)}/",
            ["RabbitMq:Port"] = ClosedPort.Number.ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ConnectTimeoutSeconds"] = "2",
        });

        var listed = Assert.Contains(ErrorQueueKit.ChargeErrors, await ErrorQueuesAsync(api));

        Assert.Equal((7, 5, 2, 1), (
            listed.GetProperty("messages").GetInt64(), listed.GetProperty("ready").GetInt64(),
            listed.GetProperty("unacknowledged").GetInt64(), listed.GetProperty("consumers").GetInt32()));
    }

    [Theory]
    [InlineData("rabbit.example.com/rabbitmq")]
    [InlineData("amqp://127.0.0.1:5672/")]
    [InlineData("http://admin:s3cret-pass@127.0.0.1:15672/")]
    public async Task A_management_url_that_is_not_an_absolute_http_url_stops_the_Api_from_starting(string url)
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:ManagementUrl"] = url,
        }));

        Assert.Contains("RabbitMq:ManagementUrl", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cret", refused.Message, StringComparison.Ordinal);
    }

    private static async Task<Dictionary<string, JsonElement>> ErrorQueuesAsync(RunningApp api) =>
        (await api.Client.GetJsonAsync("/api/error-queues")).EnumerateArray()
            .ToDictionary(queue => queue.GetProperty("name").GetString()!);
}
