namespace Conveyor.Tests.Infrastructure;

/// <summary>The real clock, plus however far a test has moved it on.</summary>
internal sealed class MovableClock : TimeProvider
{
    private long _offsetTicks;

    public void Advance(TimeSpan by) => Interlocked.Add(ref _offsetTicks, by.Ticks);

    public override DateTimeOffset GetUtcNow() => base.GetUtcNow().AddTicks(Interlocked.Read(ref _offsetTicks));
}
