using Conveyor.Bench.Infrastructure;
using MassTransit;

namespace Conveyor.Bench.Consume;

/// <summary>
/// Pauses and resumes one MassTransit receive endpoint of a running host (stop and start, as
/// MassTransit's kill switch does), and forwards its completions to the current drain's clock.
/// </summary>
public sealed class EndpointSession : IConsumeSession, IReceiveEndpointObserver, IReceiveObserver
{
    private readonly string _queue;
    private readonly Func<ValueTask> _stopHost;
    private readonly TaskCompletionSource<IReceiveEndpoint> _endpoint = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private DrainClock? _clock;
    private bool _paused;

    private EndpointSession(string queue, Func<ValueTask> stopHost)
    {
        _queue = queue;
        _stopHost = stopHost;
    }

    /// <summary>Starts the bus's host, waits for the endpoint on <paramref name="queue"/>, and pauses it.</summary>
    public static async Task<EndpointSession> StartPausedAsync(IBus bus, string queue, Func<Task> startHost, Func<ValueTask> stopHost)
    {
        var session = new EndpointSession(queue, stopHost);
        bus.ConnectReceiveEndpointObserver(session);
        bus.ConnectReceiveObserver(session);
        await startHost();
        await session._endpoint.Task.WaitAsync(TimeSpan.FromSeconds(60));
        await session.PauseAsync();
        return session;
    }

    public async Task ResumeAsync(DrainClock clock)
    {
        Volatile.Write(ref _clock, clock);
        var endpoint = await _endpoint.Task;
        var handle = endpoint.Start(CancellationToken.None);
        await handle.Ready.WaitAsync(TimeSpan.FromSeconds(60));
        _paused = false;
    }

    public async Task PauseAsync()
    {
        if (!_paused)
        {
            await (await _endpoint.Task).Stop(CancellationToken.None);
            _paused = true;
        }

        Volatile.Write(ref _clock, null);
    }

    public async ValueTask DisposeAsync() => await _stopHost();

    Task IReceiveEndpointObserver.Ready(ReceiveEndpointReady ready)
    {
        if (ready.InputAddress.AbsolutePath.EndsWith("/" + _queue, StringComparison.Ordinal))
        {
            _endpoint.TrySetResult(ready.ReceiveEndpoint);
        }

        return Task.CompletedTask;
    }

    Task IReceiveEndpointObserver.Stopping(ReceiveEndpointStopping stopping) => Task.CompletedTask;

    Task IReceiveEndpointObserver.Completed(ReceiveEndpointCompleted completed) => Task.CompletedTask;

    Task IReceiveEndpointObserver.Faulted(ReceiveEndpointFaulted faulted) => Task.CompletedTask;

    Task IReceiveObserver.PreReceive(ReceiveContext context) => Task.CompletedTask;

    Task IReceiveObserver.PostReceive(ReceiveContext context)
    {
        // Counted after the whole receive pipeline (for the worker: after the inbox commit).
        Volatile.Read(ref _clock)?.Completed();
        return Task.CompletedTask;
    }

    Task IReceiveObserver.PostConsume<T>(ConsumeContext<T> context, TimeSpan duration, string consumerType) => Task.CompletedTask;

    Task IReceiveObserver.ConsumeFault<T>(ConsumeContext<T> context, TimeSpan duration, string consumerType, Exception exception) => Task.CompletedTask;

    Task IReceiveObserver.ReceiveFault(ReceiveContext context, Exception exception) => Task.CompletedTask;
}
