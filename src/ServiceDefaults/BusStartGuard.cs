using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// Stops a bus whose start was still under way when the host began to stop. The bus starts in the
/// background (the host does not wait for the broker), and MassTransit's stop, finding no started
/// bus yet, does nothing ("Not Started"): the start then completes, connects and consumes in a
/// process that is shutting down, or for good in a process that hosts more than one app (the tests).
/// Stopped before MassTransit's hosted service (registered after it), this waits up to
/// <see cref="StartWait"/> for a start under way to end, so that MassTransit's stop finds the bus
/// started; a start that ends after that (a broker long out of reach) is stopped as soon as it ends.
/// </summary>
public sealed partial class BusStartGuard(ILogger<BusStartGuard> logger) : IBusObserver, IHostedService
{
    /// <summary>How long a stop waits for a start under way: a reachable broker answers well within it.</summary>
    public static readonly TimeSpan StartWait = TimeSpan.FromSeconds(5);

    private readonly TaskCompletionSource _startEnded = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _starting;
    private int _stopped;

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        try
        {
            if (Volatile.Read(ref _starting) == 1 && !_startEnded.Task.IsCompleted)
            {
                await _startEnded.Task.WaitAsync(StartWait, cancellationToken);
                // The start's own continuation records the started bus right after PostStart returns.
                await Task.Delay(TimeSpan.FromMilliseconds(50), cancellationToken);
            }
        }
        catch (Exception exception) when (exception is TimeoutException or OperationCanceledException)
        {
            LogStillStarting(logger, StartWait.TotalSeconds);
        }
        finally
        {
            // MassTransit's stop comes next and stops only a started bus: a start that ends from now on is stopped here.
            Volatile.Write(ref _stopped, 1);
        }
    }

    public void PostCreate(IBus bus)
    {
    }

    public void CreateFaulted(Exception exception)
    {
    }

    public Task PreStart(IBus bus)
    {
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

    public Task PostStop(IBus bus) => Task.CompletedTask;

    public Task StopFaulted(IBus bus, Exception exception) => Task.CompletedTask;

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

    [LoggerMessage(Level = LogLevel.Warning, Message = "The bus was still connecting to the broker {Seconds} s into the shutdown; it is stopped once it has connected")]
    private static partial void LogStillStarting(ILogger logger, double seconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "The bus finished starting after the shutdown began, and was stopped")]
    private static partial void LogStoppedLate(ILogger logger);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The bus finished starting after the shutdown began, and could not be stopped")]
    private static partial void LogLateStopFailed(ILogger logger, Exception exception);
}

public static class BusStartGuardExtensions
{
    /// <summary>Registers <see cref="BusStartGuard"/>; call after <c>AddMassTransit</c>, so that it stops before the bus does.</summary>
    public static IServiceCollection AddBusStartGuard(this IServiceCollection services)
    {
        services.AddSingleton<BusStartGuard>();
        services.AddBusObserver(provider => provider.GetRequiredService<BusStartGuard>());
        services.AddHostedService(provider => provider.GetRequiredService<BusStartGuard>());
        return services;
    }
}
