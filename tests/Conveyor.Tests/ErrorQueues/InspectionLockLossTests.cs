using System.Net;
using System.Text.Json;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// An inspection holds its queue's lock (a PostgreSQL advisory lock on a session of its own) so that
/// no move runs beside it. When that session is lost mid-walk, the lock is gone: the inspection must
/// stop and say so, not carry on and answer as if it had had the queue to itself.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class InspectionLockLossTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>A single-active-consumer error queue: while the test's consumer is the active one, the walk's gets nothing and waits.</summary>
    private const string Queue = "inspection-lock_error";

    private const int Messages = 10;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task An_inspection_whose_lock_session_is_terminated_answers_503_and_a_move_started_next_runs_and_loses_nothing()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        // The walk's consumer waits behind the held queue's and, with messages ready, checks again every
        // 2 s up to 30 times: a minute in which the walk is surely running when its lock's session is terminated.
        await using var held = await HeldErrorQueue.CreateAsync(fixture, broker, Queue, Messages);
        var settings = ErrorQueueKit.ApiSettings();
        settings["ErrorQueues:IdleCheckMilliseconds"] = "2000";
        await using var api = await fixture.StartApiAsync(settings);
        using var admin = ErrorQueueKit.Client(api.BaseAddress, ErrorQueueKit.AdminKey);
        admin.Timeout = TimeSpan.FromMinutes(3);

        var inspection = admin.GetAsync(new Uri($"/api/error-queues/{Queue}/messages", UriKind.Relative));
        var lockSession = await QueueLockSessions.FindAsync(fixture, () => Assert.False(inspection.IsCompleted, "the inspection ended before its lock was seen"));
        Assert.True(await QueueLockSessions.TerminateAsync(fixture, lockSession), "the lock's session had already ended: the inspection was no longer walking");

        using var answer = await inspection.WaitAsync(TimeSpan.FromMinutes(3));
        var text = await answer.Content.ReadAsStringAsync();
        Assert.True(answer.StatusCode == HttpStatusCode.ServiceUnavailable, $"{(int)answer.StatusCode}: {text}");
        var problem = JsonDocument.Parse(text).RootElement;
        Assert.Equal("Queue lock lost", problem.GetProperty("title").GetString());
        // The database session went away, as in a database outage: the same wait (ErrorHandling).
        Assert.Equal(TimeSpan.FromSeconds(5), answer.Headers.RetryAfter?.Delta);
        Assert.Contains(Queue, problem.GetProperty("detail").GetString(), StringComparison.Ordinal);

        // The queue is free: a move is accepted and takes every message, the held one too once it is released.
        await held.ReleaseAsync();
        // The broker requeues the held message after the holder's channel has closed, not before the close returns.
        await Eventually.AssertAsync(async () => Assert.Equal((uint)Messages, await broker.CountAsync(Queue)));
        var moved = await admin.RunOperationAsync($"/api/error-queues/{Queue}/move", new { });
        Assert.Equal(("succeeded", (long)Messages), (moved.GetProperty("state").GetString(), moved.GetProperty("moved").GetInt64()));
        Assert.Equal(0u, await broker.CountAsync(Queue));
        Assert.Equal(held.MessageIds.ToHashSet(), (await broker.IdsAsync(ErrorQueueKit.ChargeQueue)).Select(id => id!).ToHashSet());
    }
}
