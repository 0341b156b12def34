using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>
/// In-memory retry of transient failures: a few attempts, exponential intervals with random
/// jitter, seconds in total (the message stays unacked meanwhile, so this must stay far below
/// RabbitMQ's consumer_timeout). Each attempt passes through the inbox afresh, in a new scope.
/// Ours rather than MassTransit's UseMessageRetry, which always sits outermost in the consume
/// pipe; here it must sit inside the delayed redelivery filter.
/// </summary>
public sealed class TransientRetryFilter(int retryLimit, TimeSpan minInterval, TimeSpan maxInterval, TimeSpan maxJitter, TimeProvider time)
    : IFilter<ConsumeContext>
{
    public async Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        for (var retry = 0; ; retry++)
        {
            try
            {
                await next.Send(context);
                return;
            }
            catch (Exception exception) when (retry < retryLimit
                && FailureClassifier.IsTransient(exception)
                && !context.CancellationToken.IsCancellationRequested)
            {
                await Task.Delay(Interval(retry, Random.Shared.NextDouble()), time, context.CancellationToken);
            }
        }
    }

    /// <summary>min × 2^retry, capped at max, plus up to <c>maxJitter</c> at random.</summary>
    public TimeSpan Interval(int retry, double random)
    {
        var exponential = minInterval.TotalMilliseconds * Math.Pow(2, retry);
        var capped = Math.Min(exponential, maxInterval.TotalMilliseconds);
        return TimeSpan.FromMilliseconds(capped + maxJitter.TotalMilliseconds * random);
    }

    public void Probe(ProbeContext context)
    {
        var scope = context.CreateFilterScope("conveyor-transient-retry");
        scope.Add("retryLimit", retryLimit);
    }
}
