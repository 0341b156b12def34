using Conveyor.Tests.Infrastructure;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// A single-active-consumer error queue of dead-lettered charges whose active consumer (this one)
/// holds one message unacknowledged and leaves the rest ready: a walk's consumer waits behind it and
/// gets nothing until <see cref="ReleaseAsync"/>. Disposing deletes the queue.
/// </summary>
public sealed class HeldErrorQueue : IAsyncDisposable
{
    private readonly IConnection _connection;
    private readonly IChannel _setup;
    private IChannel? _holder;
    private string? _holderTag;

    private HeldErrorQueue(string name, IConnection connection, IChannel setup, IReadOnlyList<string> messageIds)
    {
        Name = name;
        _connection = connection;
        _setup = setup;
        MessageIds = messageIds;
    }

    public string Name { get; }

    /// <summary>The ids of the messages put in it, the held one included.</summary>
    public IReadOnlyList<string> MessageIds { get; }

    public static async Task<HeldErrorQueue> CreateAsync(ConveyorFixture fixture, TestBroker broker, string name, int messages)
    {
        var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-held-queue");
        var setup = await connection.CreateChannelAsync();
        await setup.QueueDeclareAsync(name, durable: true, exclusive: false, autoDelete: false,
            new Dictionary<string, object?> { ["x-single-active-consumer"] = true });
        var ids = new List<string>();
        for (var i = 0; i < messages; i++)
        {
            ids.Add((await broker.DeadLetterChargeAsync("System.TimeoutException", "timed out", queue: name)).ToString());
        }

        var queue = new HeldErrorQueue(name, connection, setup, ids);
        await queue.HoldAsync();
        return queue;
    }

    /// <summary>The active consumer lets go: its message goes back, and a walk gets every message.</summary>
    public async Task ReleaseAsync()
    {
        if (_holder is not null)
        {
            await _holder.BasicCancelAsync(_holderTag!);
            await _holder.CloseAsync();
            await _holder.DisposeAsync();
            _holder = null;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await ReleaseAsync();
        await _setup.QueueDeleteAsync(Name);
        await _setup.DisposeAsync();
        await _connection.DisposeAsync();
    }

    private async Task HoldAsync()
    {
        _holder = await _connection.CreateChannelAsync();
        await _holder.BasicQosAsync(0, 1, global: false);
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var consumer = new AsyncEventingBasicConsumer(_holder);
        consumer.ReceivedAsync += (_, _) =>
        {
            held.TrySetResult();
            return Task.CompletedTask;
        };
        _holderTag = await _holder.BasicConsumeAsync(Name, autoAck: false, consumer);
        await held.Task.WaitAsync(TimeSpan.FromSeconds(30));
    }
}
