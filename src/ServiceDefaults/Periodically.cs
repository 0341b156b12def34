namespace Conveyor.ServiceDefaults;

/// <summary>The loop of every background service that refreshes or sweeps something on a period.</summary>
public static class Periodically
{
    /// <summary>
    /// Runs <paramref name="step"/> at once, then once per <paramref name="period"/> (measured on
    /// <paramref name="time"/>), until <paramref name="stoppingToken"/> fires; returns quietly then.
    /// An exception other than that cancellation ends the loop: a step handles its own failures.
    /// </summary>
    public static async Task RunAsync(TimeSpan period, TimeProvider time, Func<CancellationToken, Task> step, CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(period, time);
        try
        {
            do
            {
                await step(stoppingToken);
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }
}
