using System.Diagnostics;

namespace Conveyor.Bench.Infrastructure;

/// <summary>
/// Counts completed messages; the rate runs from the first completion to the last expected one,
/// so host start-up and connection set-up stay out of the figure.
/// </summary>
public sealed class DrainClock(int expected)
{
    private readonly TaskCompletionSource<double> _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private long _first;
    private long _count;

    public long Count => Interlocked.Read(ref _count);

    /// <summary>Runs once, on the first completion (to start measuring what the steady state costs).</summary>
    public Action? OnFirst { get; set; }

    /// <summary>Completes with messages per second once <c>expected</c> messages completed.</summary>
    public Task<double> Rate => _done.Task;

    public void Completed()
    {
        var now = Stopwatch.GetTimestamp();
        if (Interlocked.CompareExchange(ref _first, now, 0) == 0)
        {
            OnFirst?.Invoke();
        }

        if (Interlocked.Increment(ref _count) == expected)
        {
            var seconds = Stopwatch.GetElapsedTime(Interlocked.Read(ref _first), now).TotalSeconds;
            _done.TrySetResult(expected <= 1 || seconds <= 0 ? double.NaN : (expected - 1) / seconds);
        }
    }
}
