using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// An operation whose walk has ended but whose result takes a while to record (the check of its jobs
/// waits on a lock): its process is alive, so it must read <c>running</c> until it reads its result,
/// never <c>interrupted</c> on the way.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class FinishingOperationTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_move_whose_jobs_check_waits_on_a_locked_table_reads_running_then_its_result_and_never_interrupted()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        for (var i = 0; i < 3; i++)
        {
            await broker.DeadLetterChargeAsync("System.TimeoutException", "timed out",
                extraHeaders: new Dictionary<string, object?> { [JobHeaders.JobId] = Guid.NewGuid().ToString() });
        }

        // Well below the 10 s the runner's check of the moved messages' jobs waits for the lock.
        var settings = ErrorQueueKit.ApiSettings();
        settings["ErrorQueues:AbandonedAfterSeconds"] = "3";
        await using var api = await fixture.StartApiAsync(settings);
        using var admin = ErrorQueueKit.Client(api.BaseAddress);

        await using var locker = new NpgsqlConnection(fixture.ConnectionString);
        await locker.OpenAsync();
        await using var transaction = await locker.BeginTransactionAsync();
        await using (var lockJobs = new NpgsqlCommand("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE", locker, transaction))
        {
            await lockJobs.ExecuteNonQueryAsync();
        }

        var states = new List<string>();
        System.Text.Json.JsonElement operation = default;
        try
        {
            using var started = await admin.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });
            var id = (await started.JsonAsync()).GetProperty("operationId").GetGuid();
            // Every read also marks operations that look abandoned; read often, as a waiting client does.
            await Eventually.AssertAsync(async () =>
            {
                operation = await admin.GetJsonAsync($"/api/operations/{id}");
                states.Add(operation.GetProperty("state").GetString()!);
                Assert.NotEqual("running", states[^1]);
            }, TimeSpan.FromSeconds(60));
        }
        finally
        {
            await transaction.RollbackAsync();
        }

        Assert.DoesNotContain("interrupted", states);
        Assert.Equal("succeeded", operation.GetProperty("state").GetString());
        Assert.Equal((3L, 0L), (operation.GetProperty("moved").GetInt64(), operation.GetProperty("failed").GetInt64()));
        Assert.Equal(3u, await broker.CountAsync(ErrorQueueKit.ChargeQueue));
        Assert.Equal(0u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }
}
