using System.Globalization;
using Conveyor.Tests.Infrastructure;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// A move holds its queue's lock on a PostgreSQL session of its own and writes its progress through it.
/// When that session stops answering (a network partition), the server ends it after about 30 s
/// (TCP keepalives, a user timeout: <c>QueueLocks</c>) and releases the lock, so another move can
/// start: the walk must have stopped by then, whatever <c>ErrorQueues:AbandonedAfterSeconds</c> says.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class OperationLockLossTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>A single-active-consumer error queue: while the test's consumer is the active one, the walk's gets nothing and waits.</summary>
    private const string Queue = "operation-lock_error";

    private const int Messages = 5;

    /// <summary>The longest a server keeps the lock of a session it cannot reach: 15 s idle, then 3 probes 5 s apart.</summary>
    private static readonly TimeSpan ServerReleasesLock = TimeSpan.FromSeconds(30);

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    /// <param name="abandonedAfterSeconds">
    /// <c>ErrorQueues:AbandonedAfterSeconds</c>: the default, and one whose third (200 s) is far longer than the server keeps the lock.
    /// </param>
    [Theory]
    [InlineData(30)]
    [InlineData(600)]
    public async Task A_move_whose_lock_session_stops_answering_stops_walking_before_the_server_could_release_the_lock(int abandonedAfterSeconds)
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        await using var held = await HeldErrorQueue.CreateAsync(fixture, broker, Queue, Messages);
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var relay = await OutageProxy.ToAsync(database.Host!, database.Port);
        database.Host = "127.0.0.1";
        database.Port = relay.Port;
        var settings = ErrorQueueKit.ApiSettings();
        // The walk waits behind the held consumer, checking again every 2 s up to 30 times: a minute.
        settings["ErrorQueues:IdleCheckMilliseconds"] = "2000";
        settings["ErrorQueues:AbandonedAfterSeconds"] = abandonedAfterSeconds.ToString(CultureInfo.InvariantCulture);
        settings["ConnectionStrings:Conveyor"] = database.ConnectionString;
        await using var api = await fixture.StartApiAsync(settings);
        using var admin = ErrorQueueKit.Client(api.BaseAddress, ErrorQueueKit.AdminKey);
        await using var amqp = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-consumer-count");
        await using var channel = await amqp.CreateChannelAsync();

        using var started = await admin.PostJsonAsync($"/api/error-queues/{Queue}/move", new { });
        var id = (await started.JsonAsync()).GetProperty("operationId").GetGuid();
        await Eventually.AssertAsync(async () =>
            Assert.True((await channel.QueueDeclarePassiveAsync(Queue)).ConsumerCount >= 2, "the walk does not consume the queue yet"));
        var lockSession = await QueueLockSessions.FindAsync(fixture);

        try
        {
            // The lock's session stops answering, and the server gives it up (as it does after its probes).
            relay.Stall();
            Assert.True(await QueueLockSessions.TerminateAsync(fixture, lockSession), "the lock's session had already ended");

            await Eventually.AssertAsync(
                async () => Assert.Equal(1u, (await channel.QueueDeclarePassiveAsync(Queue)).ConsumerCount),
                async () => "the walk still consumes the queue, after the server could have released its lock to another move",
                ServerReleasesLock);
        }
        finally
        {
            relay.Resume();
        }

        var operation = await admin.WaitForOperationAsync(id);
        Assert.Equal("failed", operation.GetProperty("state").GetString());
        Assert.StartsWith("Lost the database connection that holds the queue's lock", operation.GetProperty("detail").GetString(), StringComparison.Ordinal);
        await held.ReleaseAsync();
        // The broker requeues the held message after the holder's channel has closed, not before the close returns.
        await Eventually.AssertAsync(async () => Assert.Equal((uint)Messages, await broker.CountAsync(Queue)));
    }
}
