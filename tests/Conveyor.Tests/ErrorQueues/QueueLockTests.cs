using Conveyor.Api.Operations;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>The advisory lock that keeps two operations off one queue, and the session that holds it.</summary>
[Collection(SecondLaneCollection.Name)]
public sealed class QueueLockTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task A_lock_is_held_by_one_session_at_a_time_which_the_server_probes_so_a_vanished_machine_releases_it_within_a_minute()
    {
        var locks = new QueueLocks(Configuration(fixture.ConnectionString), Options.Create(fixture.RabbitOptions()));
        var queue = $"lock-test-{Guid.NewGuid():N}_error";

        await using (var lease = await locks.TryAcquireAsync(queue, CancellationToken.None))
        {
            Assert.NotNull(lease);
            Assert.Null(await locks.TryAcquireAsync(queue, CancellationToken.None));

            // The kernel's defaults (two hours idle) would keep a dead Api's lock, and its queue busy, that long.
            Assert.Equal("15", await ShowAsync(lease.Connection, "tcp_keepalives_idle"));
            Assert.Equal("5", await ShowAsync(lease.Connection, "tcp_keepalives_interval"));
            Assert.Equal("3", await ShowAsync(lease.Connection, "tcp_keepalives_count"));
            Assert.Equal("30000", await ShowAsync(lease.Connection, "tcp_user_timeout"));
        }

        await using var again = await locks.TryAcquireAsync(queue, CancellationToken.None);
        Assert.NotNull(again);
    }

    /// <summary>
    /// A request waiting for a queue's lock is aborted while PostgreSQL has stopped answering (a partition, a stalled
    /// host). The try of the lock under way had the request's token, so Npgsql cancelled it: on the thread that cancels,
    /// it connects to the server to send a cancel request and reads its answer, each within the connection's
    /// <c>Timeout</c>, which the connection string may set to 0 (no limit) as here. With the default 15 s the request
    /// and the cancelling thread were held 30 s; with 0 until the server answered again. Now the acquire stops waiting
    /// at once and closes its session: when the server answers again, the try that was under way does not leave the
    /// queue locked by a session nobody uses.
    /// </summary>
    [Fact]
    public async Task An_acquire_aborted_while_its_session_stops_answering_ends_and_leaves_the_queue_lockable()
    {
        var queue = $"lock-test-{Guid.NewGuid():N}_error";
        var direct = new QueueLocks(Configuration(fixture.ConnectionString), Options.Create(fixture.RabbitOptions()));
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var relay = await OutageProxy.ToAsync(database.Host!, database.Port);
        database.Host = "127.0.0.1";
        database.Port = relay.Port;
        database.Timeout = 0;
        var relayed = new QueueLocks(Configuration(database.ConnectionString), Options.Create(fixture.RabbitOptions()));

        var holder = await direct.TryAcquireAsync(queue, CancellationToken.None);
        Assert.NotNull(holder);
        using var aborted = new CancellationTokenSource();
        var cancelling = Task.CompletedTask;
        // Refused once, the waiting session's next try goes into the stall.
        var acquire = relayed.AcquireAsync(
            queue,
            _ =>
            {
                relay.Stall();
                return Task.FromResult(true);
            },
            aborted.Token);
        try
        {
            await Eventually.AssertAsync(() => Assert.True(relay.Held > 0, "no try of the lock was sent into the stall"));
            // From a thread of its own: Npgsql's cancellation blocked the thread that cancelled.
            cancelling = Task.Run(aborted.Cancel);

            // Bounded, not timed: before the fix the acquire waited for the server.
            var ended = await Task.WhenAny(acquire, Task.Delay(TimeSpan.FromMinutes(1)));
            Assert.True(ended == acquire, "the aborted acquire did not end while the server stopped answering");
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => acquire);
        }
        finally
        {
            await holder.DisposeAsync();
            relay.Resume();
            await cancelling;
        }

        // The try that was under way reaches the server now, after the holder let go: its session must end with it.
        await Eventually.AssertAsync(async () => Assert.Equal(0L, await QueueLockSessions.CountAsync(fixture)));
        await using var again = await direct.TryAcquireAsync(queue, CancellationToken.None);
        Assert.NotNull(again);
    }

    private static IConfiguration Configuration(string connectionString) =>
        new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = connectionString })
            .Build();

    private static async Task<string?> ShowAsync(NpgsqlConnection connection, string setting)
    {
        await using var command = new NpgsqlCommand($"SHOW {setting}", connection);
        return (string?)await command.ExecuteScalarAsync();
    }
}
