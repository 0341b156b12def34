using System.Collections.Concurrent;
using MassTransit;
using MassTransit.RabbitMqTransport.Configuration;
using MassTransit.Transports;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// Stops a bus whose start was still under way when the host began to stop. The bus starts in the
/// background (the host does not wait for the broker), and MassTransit's stop, finding no started
/// bus yet, does nothing ("Not Started"): the start then completes, connects and consumes in a
/// process that is shutting down, or for good in a process that hosts more than one app (the tests).
/// Stopped before MassTransit's hosted service (registered after it), this waits up to
/// <see cref="StartWait"/> for a start under way to end, so that MassTransit's stop finds the bus
/// started. A start that has not ended by then may never end (the broker out of reach, or one queue
/// it refuses to declare, <c>PRECONDITION_FAILED</c>, retried for ever) while other receive
/// endpoints already consume; nothing would stop those before the host tears down what their
/// consumers use. So the start is abandoned (<see cref="AbandonStartAsync"/>) within MassTransit's
/// <see cref="MassTransitHostOptions.StopTimeout"/>; a start that ends after the stop all the same is
/// stopped as soon as it ends.
/// </summary>
/// <param name="services">For the bus instances, at a stop: they are built with this guard as their observer, so cannot be injected.</param>
public sealed partial class BusStartGuard(ILogger<BusStartGuard> logger, IOptions<MassTransitHostOptions> hostOptions, IServiceProvider services)
    : IBusObserver, IReceiveEndpointObserver, IHostedService, IDisposable
{
    /// <summary>How long a stop waits for a start under way: a reachable broker answers well within it.</summary>
    public static readonly TimeSpan StartWait = TimeSpan.FromSeconds(5);

    /// <summary>How long abandoning a start may take when MassTransit's options set no stop timeout.</summary>
    private static readonly TimeSpan DefaultStopTimeout = TimeSpan.FromSeconds(30);

    private readonly TaskCompletionSource _startEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _stopEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _abandonStart = new();
    private readonly ConcurrentDictionary<Uri, IReceiveEndpoint> _endpoints = new();
    private IBus? _bus;
    private int _starting;
    private int _stopped;

    /// <summary>Cancelled when a stop abandons the start; <see cref="StartGuardedBusDepot"/> starts the bus with it.</summary>
    internal CancellationToken StartAbandoned => _abandonStart.Token;

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        try
        {
            if (Volatile.Read(ref _starting) == 1 && !_startEnded.Task.IsCompleted && !await StartEndedAsync(cancellationToken))
            {
                LogStillStarting(logger, StartWait.TotalSeconds);
                await AbandonStartAsync(cancellationToken);
            }
        }
        finally
        {
            // MassTransit's stop comes next and stops only a started bus: a start that ends from now on is stopped here.
            Volatile.Write(ref _stopped, 1);
        }
    }

    public void Dispose() => _abandonStart.Dispose();

    public void PostCreate(IBus bus)
    {
    }

    public void CreateFaulted(Exception exception)
    {
    }

    public Task PreStart(IBus bus)
    {
        Volatile.Write(ref _bus, bus);
        Interlocked.Exchange(ref _starting, 1);
        return Task.CompletedTask;
    }

    public Task PostStart(IBus bus, Task<BusReady> busReady)
    {
        _startEnded.TrySetResult();
        if (Volatile.Read(ref _stopped) == 1 && bus is IBusControl control)
        {
            _ = StopLateAsync(control);
        }

        return Task.CompletedTask;
    }

    public Task StartFaulted(IBus bus, Exception exception)
    {
        _startEnded.TrySetResult();
        return Task.CompletedTask;
    }

    public Task PreStop(IBus bus) => Task.CompletedTask;

    public Task PostStop(IBus bus)
    {
        _stopEnded.TrySetResult();
        return Task.CompletedTask;
    }

    public Task StopFaulted(IBus bus, Exception exception)
    {
        _stopEnded.TrySetResult();
        return Task.CompletedTask;
    }

    public Task Ready(ReceiveEndpointReady ready) => Started(ready);

    public Task Stopping(ReceiveEndpointStopping stopping) => Task.CompletedTask;

    public Task Completed(ReceiveEndpointCompleted completed) => Task.CompletedTask;

    /// <summary>An endpoint that faulted while starting retries, on a channel of its own, until it is stopped.</summary>
    public Task Faulted(ReceiveEndpointFaulted faulted) => Started(faulted);

    private Task Started(ReceiveEndpointEvent started)
    {
        _endpoints[started.InputAddress] = started.ReceiveEndpoint;
        return Task.CompletedTask;
    }

    /// <summary>Waits up to <see cref="StartWait"/> for the start under way; false when it is still under way.</summary>
    private async Task<bool> StartEndedAsync(CancellationToken cancellationToken)
    {
        try
        {
            await _startEnded.Task.WaitAsync(StartWait, cancellationToken);
            // The start's own continuation records the started bus right after PostStart returns.
            await Task.Delay(TimeSpan.FromMilliseconds(50), cancellationToken);
            return true;
        }
        catch (Exception exception) when (exception is TimeoutException or OperationCanceledException)
        {
            return _startEnded.Task.IsCompleted;
        }
    }

    /// <summary>
    /// Stops what the start began, as MassTransit stops a started bus: every receive endpoint that
    /// started (consuming, or retrying a fault), then the broker connection; then cancels the start,
    /// which stops whatever else it began (an endpoint that had not reported back) and ends. Not left
    /// to the cancelled start alone: when an endpoint's fault rather than the cancellation ends its
    /// wait, MassTransit stops the bus with the cancelled token, which only begins to stop the
    /// endpoints and leaves the connection open.
    /// </summary>
    private async Task AbandonStartAsync(CancellationToken cancellationToken)
    {
        var stopTimeout = hostOptions.Value.StopTimeout ?? DefaultStopTimeout;
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        stopping.CancelAfter(stopTimeout);
        try
        {
            try
            {
                await StopEndpointsAsync(stopping.Token);
                await StopConnectionsAsync(stopping.Token);
            }
            finally
            {
                await _abandonStart.CancelAsync();
            }

            await Task.WhenAny(_startEnded.Task, _stopEnded.Task).WaitAsync(stopping.Token);
            LogStartAbandoned(logger);
        }
        catch (OperationCanceledException)
        {
            LogAbandonedStartStillStopping(logger, stopTimeout.TotalSeconds);
        }
    }

    /// <summary>The job endpoints first, then the bus's own (replies, faults), as MassTransit stops them.</summary>
    private async Task StopEndpointsAsync(CancellationToken cancellationToken)
    {
        var busAddress = Volatile.Read(ref _bus)?.Address;
        var endpoints = _endpoints.ToArray();
        await Task.WhenAll(endpoints.Where(e => e.Key != busAddress).Select(e => StopEndpointAsync(e.Value, cancellationToken)));
        await Task.WhenAll(endpoints.Where(e => e.Key == busAddress).Select(e => StopEndpointAsync(e.Value, cancellationToken)));
    }

    private async Task StopEndpointAsync(IReceiveEndpoint endpoint, CancellationToken cancellationToken)
    {
        try
        {
            await endpoint.Stop(cancellationToken);
        }
        catch (Exception exception) when (exception is not (OperationCanceledException or OutOfMemoryException))
        {
            LogStopFailed(logger, endpoint.InputAddress, exception);
        }
    }

    /// <summary>The connection MassTransit's stop of a started bus closes last (its host's only agent).</summary>
    private async Task StopConnectionsAsync(CancellationToken cancellationToken)
    {
        foreach (var instance in services.GetServices<IBusInstance>())
        {
            if (instance.HostConfiguration is not IRabbitMqHostConfiguration rabbit)
            {
                continue;
            }

            try
            {
                // MassTransit logs through the bus's log context, which this call does not come with.
                LogContext.SetCurrentIfNull(rabbit.LogContext);
                await rabbit.ConnectionContextSupervisor.Stop("The bus start was abandoned", cancellationToken);
            }
            catch (Exception exception) when (exception is not (OperationCanceledException or OutOfMemoryException))
            {
                LogStopFailed(logger, rabbit.HostAddress, exception);
            }
        }
    }

    private async Task StopLateAsync(IBusControl bus)
    {
        try
        {
            // After the start has recorded the bus as started (right after PostStart returns).
            await Task.Delay(TimeSpan.FromMilliseconds(50));
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await bus.StopAsync(timeout.Token);
            LogStoppedLate(logger);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            try
            {
                LogLateStopFailed(logger, exception);
            }
            catch (ObjectDisposedException)
            {
                // The host's logging is gone with it; nothing is left to tell.
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "The bus was still starting {Seconds} s into the shutdown (the broker out of reach, or a queue it refuses to declare); its start is abandoned and the endpoints it started are stopped")]
    private static partial void LogStillStarting(ILogger logger, double seconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "The bus start was abandoned and what it had started was stopped")]
    private static partial void LogStartAbandoned(ILogger logger);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The bus start was abandoned, but what it had started had not stopped within {Seconds} s")]
    private static partial void LogAbandonedStartStillStopping(ILogger logger, double seconds);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Address}, begun by an abandoned bus start, could not be stopped")]
    private static partial void LogStopFailed(ILogger logger, Uri address, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "The bus finished starting after the shutdown began, and was stopped")]
    private static partial void LogStoppedLate(ILogger logger);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The bus finished starting after the shutdown began, and could not be stopped")]
    private static partial void LogLateStopFailed(ILogger logger, Exception exception);
}

public static class BusStartGuardExtensions
{
    /// <summary>
    /// Registers <see cref="BusStartGuard"/>, with MassTransit's bus depot wrapped so that the guard can
    /// abandon a start (<see cref="StartGuardedBusDepot"/>); call after <c>AddMassTransit</c>, so that
    /// it stops before the bus does.
    /// </summary>
    public static IServiceCollection AddBusStartGuard(this IServiceCollection services)
    {
        services.AddSingleton<BusStartGuard>();
        services.AddBusObserver(provider => provider.GetRequiredService<BusStartGuard>());
        services.AddReceiveEndpointObserver(provider => provider.GetRequiredService<BusStartGuard>());
        services.AddHostedService(provider => provider.GetRequiredService<BusStartGuard>());
        services.Replace(ServiceDescriptor.Singleton<IBusDepot>(provider => new StartGuardedBusDepot(
            ActivatorUtilities.CreateInstance<BusDepot>(provider), provider.GetRequiredService<BusStartGuard>())));
        return services;
    }
}

/// <summary>
/// MassTransit's bus depot, starting the bus with a token that <see cref="BusStartGuard"/> can cancel.
/// MassTransit's hosted service starts it with the host's start token, which nothing cancels once
/// the host has started, so a start that never ends would run until the process exits.
/// </summary>
internal sealed class StartGuardedBusDepot(BusDepot depot, BusStartGuard guard) : IBusDepot
{
    public async Task Start(CancellationToken cancellationToken)
    {
        using var start = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, guard.StartAbandoned);
        await depot.Start(start.Token);
    }

    public Task Stop(CancellationToken cancellationToken) => depot.Stop(cancellationToken);
}
