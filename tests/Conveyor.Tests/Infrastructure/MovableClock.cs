namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// The real clock, plus however far a test has moved it on. Made <paramref name="stopped"/>, it stands at the
/// moment it was made until moved: for a test whose margins a busy machine's real seconds would eat into.
/// </summary>
internal sealed class MovableClock(bool stopped = false) : TimeProvider
{
    private readonly DateTimeOffset? _stoppedAt = stopped ? System.GetUtcNow() : null;
    private long _offsetTicks;

    public void Advance(TimeSpan by) => Interlocked.Add(ref _offsetTicks, by.Ticks);

    public override DateTimeOffset GetUtcNow() => (_stoppedAt ?? base.GetUtcNow()).AddTicks(Interlocked.Read(ref _offsetTicks));
}
