namespace Conveyor.Tests.Infrastructure;

/// <summary>The system's clock, off by <paramref name="skew"/> (ahead when positive), as a badly synchronised node's would be.</summary>
internal sealed class SkewedClock(TimeSpan skew) : TimeProvider
{
    public override DateTimeOffset GetUtcNow() => System.GetUtcNow() + skew;
}
