using System.Diagnostics;

namespace Conveyor.Cli;

/// <summary>
/// The waits of one request refused in a way that may pass, and the budget they must end within: each wait is the
/// answer's Retry-After, or else a pause that doubles, and the budget is counted from the first refusal. One place for
/// the reads (<see cref="ReadRetry"/>) and for <c>submit</c>'s batches, so that both wait alike. One per request: it
/// holds the time of the first refusal and the next pause.
/// </summary>
internal sealed class RetryBudget
{
    private long? _failingSince;
    private TimeSpan? _pause;

    /// <summary>How long, from the first refusal, the request is tried again.</summary>
    public required TimeSpan Budget { get; init; }

    /// <summary>The first pause when the answer asks for none, and the shortest wait of any.</summary>
    public required TimeSpan ShortestPause { get; init; }

    /// <summary>The longest pause when the answer asks for none: the doubling stops there.</summary>
    public TimeSpan LongestPause { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// The longest Retry-After waited as asked; a longer one is cut to it. <see cref="TimeSpan.MaxValue"/>: honoured as
    /// asked, so that one longer than what is left of the budget ends the request at once.
    /// </summary>
    public TimeSpan LongestRetryAfter { get; init; } = TimeSpan.MaxValue;

    /// <summary>What is left of another limit than <see cref="Budget"/> (such as <c>--timeout</c>), asked before each wait; null: none.</summary>
    public Func<TimeSpan>? OtherLimitLeft { get; init; }

    /// <summary>
    /// The wait before the next try after a refusal (the first one starts the budget's clock), given the wait the
    /// answer asked for, if any; whether it ends within what is left of the budget; and how long the request has been
    /// tried.
    /// </summary>
    public Wait Next(TimeSpan? retryAfter)
    {
        _failingSince ??= Stopwatch.GetTimestamp();
        var pause = _pause ?? ShortestPause;
        _pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, LongestPause.Ticks));
        var length = retryAfter is { } asked
            ? TimeSpan.FromTicks(Math.Clamp(asked.Ticks, ShortestPause.Ticks, Math.Max(ShortestPause.Ticks, LongestRetryAfter.Ticks)))
            : pause;
        var tried = Stopwatch.GetElapsedTime(_failingSince.Value);
        var left = Budget - tried;
        if (OtherLimitLeft?.Invoke() is { } other && other < left)
        {
            left = other;
        }

        return new Wait(length, tried, length <= left);
    }

    /// <summary>A wait before the next try: how long, how long the request has been tried, and whether the wait fits.</summary>
    public readonly record struct Wait(TimeSpan Length, TimeSpan Tried, bool Fits);
}
