using System.Diagnostics;

namespace Conveyor.Bench.Infrastructure;

/// <summary>Runs an operation a fixed number of times with a fixed number in flight; records each latency.</summary>
public static class LoadLoop
{
    public sealed record Result(int Operations, int Failures, double Seconds, double[] LatenciesMs, IReadOnlyDictionary<string, int> Outcomes)
    {
        /// <summary>Successful operations per second: a failed one counts for nothing.</summary>
        public double PerSecond => (Operations - Failures) / Seconds;

        public double P50 => Stats.Percentile(LatenciesMs, 50);

        public double P99 => Stats.Percentile(LatenciesMs, 99);
    }

    /// <param name="operation">Returns an outcome label; "ok" counts as success.</param>
    public static async Task<Result> RunAsync(int operations, int inFlight, Func<int, Task<string>> operation)
    {
        var latencies = new double[operations];
        var outcomes = new System.Collections.Concurrent.ConcurrentDictionary<string, int>();
        var next = -1;
        var started = Stopwatch.GetTimestamp();
        await Task.WhenAll(Enumerable.Range(0, inFlight).Select(_ => Task.Run(async () =>
        {
            while (Interlocked.Increment(ref next) is var i && i < operations)
            {
                var begin = Stopwatch.GetTimestamp();
                string outcome;
                try
                {
                    outcome = await operation(i);
                }
                catch (Exception exception) when (exception is not OutOfMemoryException)
                {
                    outcome = exception.GetType().Name;
                }

                latencies[i] = Stopwatch.GetElapsedTime(begin).TotalMilliseconds;
                outcomes.AddOrUpdate(outcome, 1, (_, n) => n + 1);
            }
        })));
        var seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
        Array.Sort(latencies);
        var failures = operations - outcomes.GetValueOrDefault("ok");
        return new Result(operations, failures, seconds, latencies, outcomes);
    }
}
