using System.Net;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// Error queues whose names hold characters a URL path escapes. RabbitMQ allows any name, and
/// <c>GET /api/error-queues</c> lists them all, so each must be reachable by its escaped name.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class QueueNameInPathTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    [Theory]
    // Kestrel leaves %2F undecoded in a path: the route value alone cannot tell these two apart.
    [InlineData("orders/eu_error")]
    [InlineData("orders%2Feu_error")]
    [InlineData("orders 100%_error")]
    [InlineData("orders#eu?x=1_error")]
    public async Task A_queue_is_inspected_grouped_and_purged_by_its_escaped_name(string queue)
    {
        await Broker.DeclareAsync(queue);
        var kept = await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out", queue: queue);
        var purged = await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out", queue: queue);
        var path = $"/api/error-queues/{Uri.EscapeDataString(queue)}";

        var listed = await Admin.GetJsonAsync("/api/error-queues");
        Assert.Contains(listed.EnumerateArray(), q => q.GetProperty("name").GetString() == queue);

        var peek = await Admin.GetJsonAsync($"{path}/messages");
        Assert.Equal(queue, peek.GetProperty("queue").GetString());
        Assert.Equal([kept.ToString(), purged.ToString()], peek.GetProperty("messages").EnumerateArray().Select(m => m.GetProperty("messageId").GetString()));

        var groups = await Admin.GetJsonAsync($"{path}/groups/");
        Assert.Equal(2, groups.GetProperty("groups").EnumerateArray().Single().GetProperty("count").GetInt32());

        var operation = await Admin.RunOperationAsync($"{path}/purge", new { filter = new { messageIds = new[] { purged.ToString() } }, confirm = queue });
        Assert.Equal(("succeeded", 1), (operation.GetProperty("state").GetString(), operation.GetProperty("purged").GetInt64()));
        Assert.Equal([kept.ToString()], await Broker.IdsAsync(queue));
    }

    [Fact]
    public async Task A_name_holding_an_escaped_slash_is_not_taken_for_a_queue_holding_a_slash()
    {
        await Broker.DeclareAsync("orders/us_error");
        await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out", queue: "orders/us_error");

        using var response = await Admin.GetAsync($"/api/error-queues/{Uri.EscapeDataString("orders%2Fus_error")}/messages");

        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
    }
}
