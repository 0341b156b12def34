using System.Diagnostics;

namespace Conveyor.Bench.Infrastructure;

/// <summary>Counts the database commands this process runs (Npgsql's activities), each one a round trip.</summary>
public sealed class CommandCounter : IDisposable
{
    private readonly ActivityListener _listener;
    private long _commands;

    public CommandCounter()
    {
        _listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == "Npgsql",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.PropagationData,
            ActivityStopped = _ => Interlocked.Increment(ref _commands),
        };
        ActivitySource.AddActivityListener(_listener);
    }

    public long Commands => Interlocked.Read(ref _commands);

    public void Dispose() => _listener.Dispose();
}
