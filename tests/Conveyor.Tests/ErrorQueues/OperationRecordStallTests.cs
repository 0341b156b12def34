using System.Net.Http.Json;
using Conveyor.Tests.Infrastructure;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// A move's request, its queue's lock just taken, is aborted while PostgreSQL stops answering. Before the
/// operation's row is written, two commands run on the lock's own session (the stale row's update and the
/// database's clock). They had the request's token, so Npgsql cancelled them: it connects to send a cancel
/// request and waits for its answer, without bound when the connection string's <c>Timeout</c> is 0, as here,
/// and the lock stayed held (every other move or purge of the queue 409) until the server answered again. Now
/// the request stops waiting at once and the lock's session is closed, which gives the lock up.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class OperationRecordStallTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_move_aborted_while_its_lock_session_stops_answering_gives_the_lock_up()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        await broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var relay = await OutageProxy.ToAsync(database.Host!, database.Port);
        database.Host = "127.0.0.1";
        database.Port = relay.Port;
        database.Timeout = 0;
        var settings = ErrorQueueKit.ApiSettings();
        settings["ConnectionStrings:Conveyor"] = database.ConnectionString;
        await using var api = await fixture.StartApiAsync(settings);
        using var admin = ErrorQueueKit.Client(api.BaseAddress);

        // A row of a dead process's operation on the queue, which the new operation marks interrupted: held by
        // this test, so that update waits on the lock's session until the test lets go.
        await using var holder = new NpgsqlConnection(fixture.ConnectionString);
        await holder.OpenAsync();
        var stale = Guid.NewGuid();
        await using (var insert = new NpgsqlCommand(
            """
            INSERT INTO error_queue_operations (id, kind, queue, virtual_host, filter, dry_run, state, requested_by,
                queue_depth_at_start, examined, matched, moved, purged, failed, message_ids, message_ids_truncated, targets,
                created_at, updated_at)
            VALUES (@id, 'move', @queue, @vhost, '{}', false, 'running', 'test', 0, 0, 0, 0, 0, 0, '[]', false, '{}', now(), now())
            """, holder))
        {
            insert.Parameters.AddWithValue("id", stale);
            insert.Parameters.AddWithValue("queue", ErrorQueueKit.ChargeErrors);
            insert.Parameters.AddWithValue("vhost", fixture.RabbitOptions().VirtualHost);
            await insert.ExecuteNonQueryAsync();
        }

        await using var hold = await holder.BeginTransactionAsync();
        await using (var lockRow = new NpgsqlCommand("SELECT 1 FROM error_queue_operations WHERE id = @id FOR UPDATE", holder, hold))
        {
            lockRow.Parameters.AddWithValue("id", stale);
            await lockRow.ExecuteScalarAsync();
        }

        using var aborted = new CancellationTokenSource();
        var request = admin.PostAsJsonAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", UriKind.Relative), new { }, aborted.Token);
        try
        {
            await Eventually.AssertAsync(async () => Assert.True(await LockSessionWaitsAsync(), "the lock's session is not waiting for the held row"));

            // The server stops answering the Api, and the client gives up on its request. A session the Api closes is
            // seen closed by the server (which otherwise notices within about 30 s: QueueLocks), so its lock goes.
            relay.Stall(passCloses: true);
            await aborted.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => request);
            await hold.CommitAsync();

            // Still stalled: the lock must go with the abandoned request, not when the server answers again.
            await Eventually.AssertAsync(
                async () => Assert.Equal(0L, await QueueLockSessions.CountAsync(fixture)),
                async () => "the aborted request's session still holds the queue's lock while the server does not answer",
                TimeSpan.FromSeconds(45));
        }
        finally
        {
            relay.Resume();
        }

        using var next = await admin.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true });
        Assert.Equal(System.Net.HttpStatusCode.Accepted, next.StatusCode);
    }

    /// <summary>True while a queue lock's session waits for a row lock (the stale row's update).</summary>
    private async Task<bool> LockSessionWaitsAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var find = new NpgsqlCommand(
            """
            SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE datname = current_database() AND application_name = 'conveyor-api-queue-lock'
                              AND wait_event_type = 'Lock')
            """, connection);
        return await find.ExecuteScalarAsync() is true;
    }
}
