using Conveyor.Worker.Redelivery;
using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>
/// In-memory retry of transient failures: a few attempts, exponential intervals with random
/// jitter (<see cref="RetryIntervals"/>), seconds in total (the message stays unacked meanwhile, so
/// this must stay far below RabbitMQ's consumer_timeout: <see cref="Messaging.ConsumerTimeoutValidator"/>).
/// A remote side's Retry-After is waited out when it fits in that total; a longer one ends the
/// in-memory retries, and the delayed redelivery waits it out instead, when one may still follow
/// (<see cref="RedeliveryAhead"/>): where none can, the retries go on, so the job still gets every
/// attempt configured.
/// Each attempt passes through the inbox afresh, in a new scope.
/// Ours rather than MassTransit's UseMessageRetry, which always sits outermost in the consume
/// pipe; here it must sit inside the delayed redelivery filter.
/// </summary>
public sealed class TransientRetryFilter(RetryIntervals intervals, TimeProvider time)
    : IFilter<ConsumeContext>
{
    public async Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        // MassTransit's GetRetryAttempt() reads its own retry filter's payload, which this one is not.
        var attempt = context.GetOrAddPayload(() => new TransientRetryAttempt());
        var waited = TimeSpan.Zero;
        for (var retry = 0; ; retry++)
        {
            attempt.Retry = retry;
            if (context.TryGetPayload(out FaultHoldingConsumeContext? faults))
            {
                faults.BeginAttempt();
            }

            try
            {
                await next.Send(context);
                return;
            }
            catch (Exception exception) when (retry < intervals.RetryLimit
                && FailureClassifier.IsTransient(exception)
                // The delivery is at its consumer_timeout: a retry on it would be cut off at once.
                && exception is not DeliveryDeadlineException
                && !context.CancellationToken.IsCancellationRequested
                // A delivery that must not hold its slot through retry waits leaves them to the delayed redelivery, if one may follow.
                && !(context.TryGetPayload(out InMemoryRetriesWaived? _) && RedeliveryAhead.Of(context))
                // A remote side that asked for more time than is left here gets it from the delayed redelivery,
                // when one may follow; else the retries go on, as long after it as the budget allows.
                && intervals.WaitBefore(
                    retry, Random.Shared.NextDouble(), (exception as TransientFailureException)?.RetryAfter, waited, RedeliveryAhead.Of(context)) is { } wait)
            {
                await Task.Delay(wait, time, context.CancellationToken);
                waited += wait;
            }
        }
    }

    public void Probe(ProbeContext context)
    {
        var scope = context.CreateFilterScope("conveyor-transient-retry");
        scope.Add("retryLimit", intervals.RetryLimit);
    }
}

/// <summary>
/// The in-memory retry in progress (a payload of the consume context): 0 on a message's first pass
/// through <see cref="TransientRetryFilter"/>, then 1, 2, …
/// </summary>
public sealed class TransientRetryAttempt
{
    public int Retry { get; internal set; }

    /// <summary>The retry in progress of <paramref name="context"/>'s message; 0 outside the retry filter.</summary>
    public static int Of(ConsumeContext context) => context.TryGetPayload(out TransientRetryAttempt? attempt) ? attempt.Retry : 0;
}

/// <summary>
/// A payload of the consume context: this delivery's transient failure goes to the delayed redelivery at
/// once instead of being retried in memory, when a redelivery may follow (<see cref="RedeliveryAhead"/>;
/// where none can, the retries go on, so the job still gets every attempt configured). Set for a delivery
/// admitted over a limit it must not hold a slot past (<see cref="Webhooks.WebhookOriginLimitFilter"/>).
/// </summary>
public sealed class InMemoryRetriesWaived;
