using System.Text.Json;

namespace Conveyor.Cli;

/// <summary>
/// How a read that failed in a way that may pass is tried again: after the answer's Retry-After, or after a pause that
/// doubles, for a budget counted from its first failure (<see cref="RetryBudget"/>). Only a failure that says "try later"
/// (<see cref="ExitCodes.Unreachable"/>) is ever tried again, never a key lockout, a 4xx or a 500; <see cref="MayPass"/>
/// narrows that further. One place, so that the plain reads (<see cref="ConveyorClient.GetAsync"/>) and an operation's
/// progress poll wait alike.
/// </summary>
internal sealed class ReadRetry
{
    /// <summary>
    /// Which of the "try later" failures are tried again: given the answer, or null when none came (the Api could not be
    /// reached, broke off, or did not answer in time).
    /// </summary>
    public required Func<ConveyorClient.Answer?, bool> MayPass { get; init; }

    /// <summary>
    /// An answer that is not a "try later" but asks to be tried again all the same, such as a cancel's 409 with Retry-After
    /// (the job's row was held for a moment); null: none. A request that changes something is tried again only when
    /// sending it twice does what sending it once does.
    /// </summary>
    public Func<ConveyorClient.Answer, bool>? AlsoTryAgain { get; init; }

    /// <summary>The waits between the tries and the budget they end within; a new one for each read.</summary>
    public required RetryBudget Waits { get; init; }

    /// <summary>
    /// Rewrites a field name of a refused read's errors (<see cref="ConveyorClient.Answer.Failure"/>): a query parameter as the
    /// option that gives it, such as <c>cursor</c> as <c>--after</c>. Null: as the Api names it.
    /// </summary>
    public Func<string, string>? DescribeField { get; init; }

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
                failure = answered.Failure(DescribeField);
            }
            catch (CliFailureException unanswered) when (unanswered.ExitCode == ExitCodes.Unreachable && MayPass(null))
            {
                failure = unanswered;
            }

            var tryAgain = failure.ExitCode == ExitCodes.Unreachable
                ? answer is null || MayPass(answer)
                : answer is { } refused && AlsoTryAgain?.Invoke(refused) == true;
            if (!tryAgain)
            {
                throw failure;
            }

            var (wait, tried, fits) = Waits.Next(answer?.RetryAfter);
            if (!fits)
            {
                throw GiveUp(failure, wait, tried);
            }

            Retrying(failure, wait);
            await Task.Delay(wait, cancellationToken);
        }
    }
}
