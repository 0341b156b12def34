using System.Diagnostics;
using System.Text.Json;

namespace Conveyor.Cli;

/// <summary>
/// How a read that failed in a way that may pass is tried again: after the answer's Retry-After, or after a pause that
/// doubles, for a budget counted from its first failure. Only a failure that says "try later" (<see cref="ExitCodes.Unreachable"/>)
/// is ever tried again, never a key lockout, a 4xx or a 500; <see cref="MayPass"/> narrows that further. One place, so that
/// the plain reads (<see cref="ConveyorClient.GetAsync"/>) and an operation's progress poll wait alike.
/// </summary>
internal sealed class ReadRetry
{
    /// <summary>
    /// Which of the "try later" failures are tried again: given the answer, or null when none came (the Api could not be
    /// reached, broke off, or did not answer in time).
    /// </summary>
    public required Func<ConveyorClient.Answer?, bool> MayPass { get; init; }

    /// <summary>How long, from the first failure, the read is tried again.</summary>
    public required TimeSpan Budget { get; init; }

    /// <summary>The first pause when the answer asks for none, and the shortest wait of any.</summary>
    public required TimeSpan ShortestPause { get; init; }

    /// <summary>The longest pause when the answer asks for none: the doubling stops there.</summary>
    public TimeSpan LongestPause { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// The longest Retry-After waited as asked; a longer one is cut to it. <see cref="TimeSpan.MaxValue"/>: honoured as
    /// asked, so that one longer than what is left of the budget ends the read at once.
    /// </summary>
    public TimeSpan LongestRetryAfter { get; init; } = TimeSpan.MaxValue;

    /// <summary>What is left of another limit than <see cref="Budget"/> (such as <c>--timeout</c>), asked before each wait; null: none.</summary>
    public Func<TimeSpan>? OtherLimitLeft { get; init; }

    /// <summary>Told the failure and the wait each time the read is about to be tried again.</summary>
    public required Action<CliFailureException, TimeSpan> Retrying { get; init; }

    /// <summary>The failure to end with when the next wait would pass the budget: given the last failure, that wait and the time tried.</summary>
    public required Func<CliFailureException, TimeSpan, TimeSpan, CliFailureException> GiveUp { get; init; }

    /// <summary>
    /// Reads with <paramref name="read"/> until it succeeds, fails for good (thrown as it is), or the budget is spent
    /// (<see cref="GiveUp"/>). A read that throws <see cref="ExitCodes.Unreachable"/> had no answer.
    /// </summary>
    public async Task<JsonElement> ReadAsync(Func<CancellationToken, Task<ConveyorClient.Answer>> read, CancellationToken cancellationToken)
    {
        long? failingSince = null;
        var pause = ShortestPause;
        while (true)
        {
            CliFailureException failure;
            ConveyorClient.Answer? answer = null;
            try
            {
                var answered = await read(cancellationToken);
                if (answered.IsSuccess)
                {
                    return answered.Body;
                }

                answer = answered;
                failure = answered.Failure();
            }
            catch (CliFailureException unanswered) when (unanswered.ExitCode == ExitCodes.Unreachable && MayPass(null))
            {
                failure = unanswered;
            }

            if (failure.ExitCode != ExitCodes.Unreachable || (answer is not null && !MayPass(answer)))
            {
                throw failure;
            }

            failingSince ??= Stopwatch.GetTimestamp();
            var wait = answer?.RetryAfter is { } asked
                ? TimeSpan.FromTicks(Math.Clamp(asked.Ticks, ShortestPause.Ticks, Math.Max(ShortestPause.Ticks, LongestRetryAfter.Ticks)))
                : pause;
            var tried = Stopwatch.GetElapsedTime(failingSince.Value);
            var left = Budget - tried;
            if (OtherLimitLeft?.Invoke() is { } other && other < left)
            {
                left = other;
            }

            if (wait > left)
            {
                throw GiveUp(failure, wait, tried);
            }

            Retrying(failure, wait);
            await Task.Delay(wait, cancellationToken);
            pause = TimeSpan.FromTicks(Math.Min(pause.Ticks * 2, LongestPause.Ticks));
        }
    }
}
