using System.Net;
using System.Text.Json;
using Conveyor.Storage.Operations;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// Two Api deployments on two vhosts of one broker sharing one database (a staging setup): each one's
/// error-queue operations are its own. Same-named queues do not conflict, neither one marks the
/// other's running operation interrupted, and each lists and reads only its own.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class OperationVhostTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Moves_on_same_named_queues_of_two_vhosts_sharing_a_database_run_side_by_side_and_each_Api_sees_only_its_own()
    {
        // Paced at two messages a second, the first move cannot end in less than 14.5 s: everything
        // up to the second move's answer happens while it runs.
        const int FirstMessages = 30;
        const int SecondMessages = 3;
        await using var scratch = await fixture.ScratchVhostAsync("operations");
        await using var firstBroker = await TestBroker.ConnectAsync(fixture);
        await using var secondBroker = await TestBroker.ConnectAsync(fixture, scratch.Name);
        for (var i = 0; i < FirstMessages; i++)
        {
            await firstBroker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        }

        for (var i = 0; i < SecondMessages; i++)
        {
            await secondBroker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        }

        await using var firstApi = await fixture.StartApiAsync(ErrorQueueKit.ApiSettings(maxMessagesPerSecond: 2));
        var secondSettings = ErrorQueueKit.ApiSettings();
        secondSettings["RabbitMq:VirtualHost"] = scratch.Name;
        await using var secondApi = await fixture.StartApiAsync(secondSettings);
        using var first = ErrorQueueKit.Client(firstApi.BaseAddress);
        using var second = ErrorQueueKit.Client(secondApi.BaseAddress);

        using var firstStarted = await first.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });
        var firstId = (await firstStarted.JsonAsync()).GetProperty("operationId").GetGuid();
        using var secondStarted = await second.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });
        var secondText = await secondStarted.Content.ReadAsStringAsync();
        Assert.True(secondStarted.StatusCode == HttpStatusCode.Accepted, $"{(int)secondStarted.StatusCode}: {secondText}");
        var secondId = JsonDocument.Parse(secondText).RootElement.GetProperty("operationId").GetGuid();

        // The second move's start must not have taken the first, still walking, for one a dead process left.
        Assert.Equal("running", (await first.GetJsonAsync($"/api/operations/{firstId}")).GetProperty("state").GetString());

        Assert.Equal([firstId], await IdsAsync(first, "/api/operations"));
        Assert.Equal([secondId], await IdsAsync(second, "/api/operations"));
        Assert.Equal([firstId], await IdsAsync(first, "/api/operations?state=running"));
        using (var foreign = await first.GetAsync(new Uri($"/api/operations/{secondId}", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.NotFound, foreign.StatusCode);
        }

        var secondDone = await second.WaitForOperationAsync(secondId);
        var firstDone = await first.WaitForOperationAsync(firstId);
        Assert.Equal(("succeeded", (long)SecondMessages), (secondDone.GetProperty("state").GetString(), secondDone.GetProperty("moved").GetInt64()));
        Assert.Equal(("succeeded", (long)FirstMessages), (firstDone.GetProperty("state").GetString(), firstDone.GetProperty("moved").GetInt64()));
        Assert.Equal([firstId], await IdsAsync(first, "/api/audit"));
        Assert.Equal([secondId], await IdsAsync(second, $"/api/audit?queue={ErrorQueueKit.ChargeErrors}"));
        Assert.Equal(((uint)FirstMessages, 0u), (await firstBroker.CountAsync(ErrorQueueKit.ChargeQueue), await firstBroker.CountAsync(ErrorQueueKit.ChargeErrors)));
        Assert.Equal(((uint)SecondMessages, 0u), (await secondBroker.CountAsync(ErrorQueueKit.ChargeQueue), await secondBroker.CountAsync(ErrorQueueKit.ChargeErrors)));
    }

    [Fact]
    public async Task Each_Api_settles_only_its_own_abandoned_operations_and_those_recorded_before_rows_named_their_vhost()
    {
        await using var scratch = await fixture.ScratchVhostAsync("abandoned");
        // Left running an hour ago by processes that died: one per vhost, on queues of the same name,
        // and one recorded before rows named their vhost.
        var mine = await AbandonedAsync(fixture.VirtualHost);
        var theirs = await AbandonedAsync(scratch.Name);
        var older = await AbandonedAsync(null);

        await using var firstApi = await fixture.StartApiAsync(ErrorQueueKit.ApiSettings());
        using var first = ErrorQueueKit.Client(firstApi.BaseAddress);
        Assert.Equal(new HashSet<Guid> { mine, older }, (await IdsAsync(first, "/api/operations")).ToHashSet());
        Assert.Equal(
            new Dictionary<Guid, string>
            {
                [mine] = ErrorQueueOperationStates.Interrupted,
                [theirs] = ErrorQueueOperationStates.Running,
                [older] = ErrorQueueOperationStates.Interrupted,
            },
            await StatesAsync());

        var secondSettings = ErrorQueueKit.ApiSettings();
        secondSettings["RabbitMq:VirtualHost"] = scratch.Name;
        await using var secondApi = await fixture.StartApiAsync(secondSettings);
        using var second = ErrorQueueKit.Client(secondApi.BaseAddress);
        var theirsRead = await second.GetJsonAsync($"/api/operations/{theirs}");
        Assert.Equal(ErrorQueueOperationStates.Interrupted, theirsRead.GetProperty("state").GetString());
        Assert.Equal(new HashSet<Guid> { theirs, older }, (await IdsAsync(second, "/api/audit")).ToHashSet());
    }

    /// <summary>A row as a dead process leaves it: running, its last progress an hour old.</summary>
    private async Task<Guid> AbandonedAsync(string? virtualHost)
    {
        var lastProgress = DateTimeOffset.UtcNow.AddHours(-1);
        var operation = new ErrorQueueOperation
        {
            Id = Guid.CreateVersion7(lastProgress),
            Kind = ErrorQueueOperationKinds.Move,
            Queue = ErrorQueueKit.ChargeErrors,
            VirtualHost = virtualHost,
            Filter = "{}",
            State = ErrorQueueOperationStates.Running,
            RequestedBy = ErrorQueueKit.AdminName,
            MessageIds = "[]",
            Targets = "{}",
            CreatedAt = lastProgress,
            UpdatedAt = lastProgress,
        };
        await using var db = fixture.CreateDbContext();
        db.ErrorQueueOperations.Add(operation);
        await db.SaveChangesAsync();
        return operation.Id;
    }

    private async Task<Dictionary<Guid, string>> StatesAsync()
    {
        await using var db = fixture.CreateDbContext();
        return await db.ErrorQueueOperations.ToDictionaryAsync(o => o.Id, o => o.State);
    }

    private static async Task<IReadOnlyList<Guid>> IdsAsync(HttpClient client, string path) =>
        [.. (await client.GetJsonAsync(path)).EnumerateArray().Select(o => o.GetProperty("operationId").GetGuid())];
}
