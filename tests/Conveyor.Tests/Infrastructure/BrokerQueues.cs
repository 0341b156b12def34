using Conveyor.ServiceDefaults;
using Microsoft.Extensions.DependencyInjection;
using RabbitMQ.Client;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Exact figures of a queue, read over AMQP with a passive declare at the moment of asking. The
/// management API's figures are sampled every few seconds, so a stale 0 would pass a "drained" check
/// at once. A passive declare fails when the queue does not exist (a misspelt or undeclared queue is
/// never taken for an empty one), and counts only ready messages, not those a consumer holds unacked:
/// a queue is drained when its ready count is 0 and its worker holds none of its messages
/// (<see cref="AssertDrainedAsync"/>).
/// </summary>
public static class BrokerQueues
{
    private static Dictionary<string, object?>? JobQueueArguments(string queue) => new RabbitMqOptions().JobQueueArguments(queue);

    /// <summary>Messages ready in <paramref name="queue"/> now; throws when the queue does not exist.</summary>
    public static async Task<uint> ReadyAsync(this ConveyorFixture fixture, string queue, string? virtualHost = null) =>
        (await DeclarePassiveAsync(fixture, queue, virtualHost)).MessageCount;

    /// <summary>Consumers of <paramref name="queue"/> now; throws when the queue does not exist.</summary>
    public static async Task<uint> ConsumersAsync(this ConveyorFixture fixture, string queue, string? virtualHost = null) =>
        (await DeclarePassiveAsync(fixture, queue, virtualHost)).ConsumerCount;

    /// <summary>
    /// Declares <paramref name="queue"/> as the worker declares a job queue and MassTransit its
    /// <c>_error</c> queue (durable classic, with the job queues' arguments), so that it can be counted
    /// before anything was dead-lettered into it: MassTransit declares an <c>_error</c> queue only then.
    /// </summary>
    public static async Task DeclareAsync(this ConveyorFixture fixture, string queue, string? virtualHost = null)
    {
        await using var connection = await fixture.AmqpFactory(virtualHost).CreateConnectionAsync("conveyor-tests-declare");
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, JobQueueArguments(queue));
    }

    /// <summary>
    /// Waits until <paramref name="queue"/> holds no ready message (every one was delivered) and
    /// <paramref name="worker"/> (started by <see cref="ConveyorFixture.StartWorkerAsync"/>) has finished
    /// every message it took, then stops the worker and asserts the queue is still empty: a message the
    /// worker gave back (requeued, or not yet started when it stopped) would be in it again. After this
    /// nothing more of the test's work can run, so what the test counts next is final.
    /// </summary>
    public static async Task AssertDrainedAsync(this ConveyorFixture fixture, RunningApp worker, string queue)
    {
        var inFlight = worker.Services.GetRequiredService<InFlightMessages>();
        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(0u, await fixture.ReadyAsync(queue));
            Assert.True(inFlight.Count == 0, $"the worker is still handling {inFlight.Count} message(s)");
        });
        await worker.StopAsync();
        Assert.Equal(0u, await fixture.ReadyAsync(queue));
    }

    private static async Task<QueueDeclareOk> DeclarePassiveAsync(ConveyorFixture fixture, string queue, string? virtualHost)
    {
        await using var connection = await fixture.AmqpFactory(virtualHost).CreateConnectionAsync("conveyor-tests-count");
        await using var channel = await connection.CreateChannelAsync();
        return await channel.QueueDeclarePassiveAsync(queue);
    }
}
