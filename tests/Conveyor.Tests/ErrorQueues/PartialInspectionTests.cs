using System.Globalization;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// A peek or a grouping whose walk ends before it has seen what it set out to see (the messages it
/// expected never arrive: another consumer holds the queue) must say so. Answered as a plain 200 with
/// an empty list, an operator reads "nothing here" of a queue that holds messages.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class PartialInspectionTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>A single-active-consumer error queue: while the test's consumer is the active one, the walk's gets nothing.</summary>
    private const string Queue = "partial-inspection_error";

    private const int Messages = 5;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_peek_and_a_grouping_that_could_not_see_the_queue_say_they_stopped_early_and_a_complete_one_does_not()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        await using var held = await HeldErrorQueue.CreateAsync(fixture, broker, Queue, Messages);
        var settings = ErrorQueueKit.ApiSettings();
        settings["ErrorQueues:IdleCheckMilliseconds"] = 100.ToString(CultureInfo.InvariantCulture);
        await using var api = await fixture.StartApiAsync(settings);
        using var admin = ErrorQueueKit.Client(api.BaseAddress, ErrorQueueKit.AdminKey);

        var peek = await admin.GetJsonAsync($"/api/error-queues/{Queue}/messages");
        Assert.Equal(Messages - 1, peek.GetProperty("queueDepth").GetInt64());
        Assert.Equal(0, peek.GetProperty("messages").GetArrayLength());
        Assert.Contains("No more messages arrived", peek.GetProperty("stoppedEarly").GetString(), StringComparison.Ordinal);

        var groups = await admin.GetJsonAsync($"/api/error-queues/{Queue}/groups");
        Assert.Equal(0, groups.GetProperty("examined").GetInt64());
        Assert.Contains("No more messages arrived", groups.GetProperty("stoppedEarly").GetString(), StringComparison.Ordinal);

        // The queue free again: the walk sees every message and has nothing to add.
        await held.ReleaseAsync();
        await Eventually.AssertAsync(async () => Assert.Equal((uint)Messages, await broker.CountAsync(Queue)));
        peek = await admin.GetJsonAsync($"/api/error-queues/{Queue}/messages");
        Assert.Equal(Messages, peek.GetProperty("messages").GetArrayLength());
        Assert.True(IsAbsentOrNull(peek, "stoppedEarly"), peek.ToString());
        groups = await admin.GetJsonAsync($"/api/error-queues/{Queue}/groups");
        Assert.Equal(Messages, groups.GetProperty("examined").GetInt64());
        Assert.True(IsAbsentOrNull(groups, "stoppedEarly"), groups.ToString());
    }

    private static bool IsAbsentOrNull(System.Text.Json.JsonElement answer, string property) =>
        !answer.TryGetProperty(property, out var value) || value.ValueKind == System.Text.Json.JsonValueKind.Null;
}
