using System.Globalization;
using System.Net;
using System.Text.Json;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// <c>GET /dashboard/api/overview</c> when the management API answers something other than its list of
/// queues (another service at that address, a proxy's JSON): "broker unavailable, retry" (503), as for
/// an unreachable one, never a 500.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class DashboardOverviewTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData("""{"error":"not_found","reason":"Not Found"}""")]
    [InlineData("\"queues\"")]
    public async Task An_answer_that_is_not_a_list_of_queues_is_a_503_not_a_500(string answer)
    {
        var (status, body, retryAfter) = await OverviewAsync(answer);

        Assert.True(status == HttpStatusCode.ServiceUnavailable, $"{(int)status}: {body}");
        Assert.Equal("Message broker unavailable", JsonDocument.Parse(body).RootElement.GetProperty("title").GetString());
        Assert.Equal(TimeSpan.FromSeconds(5), retryAfter);
    }

    [Fact]
    public async Task A_listed_entry_without_a_name_is_left_out_and_the_queues_are_shown()
    {
        var (status, body, _) = await OverviewAsync("""[{"messages":3}, {"name":42}, {"name":"charge-payment","messages":2,"consumers":1}]""");

        Assert.True(status == HttpStatusCode.OK, $"{(int)status}: {body}");
        var queue = Assert.Single(JsonDocument.Parse(body).RootElement.GetProperty("queues").EnumerateArray());
        Assert.Equal("charge-payment", queue.GetProperty("name").GetString());
        Assert.Equal(2, queue.GetProperty("messages").GetInt64());
    }

    [Theory]
    [InlineData("""[{"name":"charge-payment","messages":2.5,"consumers":1}]""")] // a count that is no whole number
    [InlineData("""[{"name":"charge-payment","messages":1e30,"consumers":1}]""")] // nor fits in one
    [InlineData("""[{"name":"charge-payment","consumers":1,"message_stats":{"publish_details":null}}]""")] // details that are no object
    [InlineData("""[{"name":"charge-payment","consumers":1,"message_stats":{"ack_details":{"rate":1e400}}}]""")] // a rate beyond a double
    public async Task A_listed_value_of_an_unexpected_shape_counts_as_absent_and_the_queues_are_shown(string answer)
    {
        var (status, body, _) = await OverviewAsync(answer);

        Assert.True(status == HttpStatusCode.OK, $"{(int)status}: {body}");
        var queue = Assert.Single(JsonDocument.Parse(body).RootElement.GetProperty("queues").EnumerateArray());
        Assert.Equal("charge-payment", queue.GetProperty("name").GetString());
        Assert.Equal(1, queue.GetProperty("consumers").GetInt32());
        Assert.Equal(0, queue.GetProperty("ackRate").GetDouble());
    }

    /// <summary>The dashboard's overview from an Api whose management API answers the queue listing with <paramref name="queuesAnswer"/>.</summary>
    private async Task<(HttpStatusCode Status, string Body, TimeSpan? RetryAfter)> OverviewAsync(string queuesAnswer)
    {
        await using var management = await FakeRabbitManagement.StartAsync();
        management.QueuesAnswer = queuesAnswer;
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:ManagementPort"] = management.Port.ToString(CultureInfo.InvariantCulture),
        });
        using var response = await api.Client.GetAsync(new Uri("/dashboard/api/overview", UriKind.Relative));
        return (response.StatusCode, await response.Content.ReadAsStringAsync(), response.Headers.RetryAfter?.Delta);
    }
}
