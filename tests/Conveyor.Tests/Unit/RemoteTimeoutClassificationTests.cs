using Conveyor.Worker.Failures;
using MassTransit;

namespace Conveyor.Tests.Unit;

/// <summary>
/// A remote call that ran out of time is transient, however MassTransit hands it on; a shutdown is not.
/// MassTransit replaces a consumer's exception whose innermost cause is a cancellation (while the
/// delivery's own token is not cancelled) with a <see cref="ConsumerCanceledException"/> without a cause.
/// </summary>
public sealed class RemoteTimeoutClassificationTests
{
    [Fact]
    public void A_remote_timeout_does_not_end_in_a_cancellation_that_MassTransit_would_take_for_the_consumer_cancelling_itself()
    {
        // As HttpClient throws at its Timeout: the cause chain ends in its timer's cancellation.
        var httpTimeout = new TaskCanceledException(
            "The request was canceled due to the configured HttpClient.Timeout of 2 seconds elapsing.",
            new TimeoutException("The operation was canceled.", new OperationCanceledException()));

        var failure = HttpFailures.TimedOut("The payment gateway timed out", httpTimeout);

        Assert.IsNotAssignableFrom<OperationCanceledException>(failure.GetBaseException());
        Assert.Contains("HttpClient.Timeout of 2 seconds", failure.GetBaseException().Message, StringComparison.Ordinal);
        Assert.True(FailureClassifier.IsTransient(failure));
    }

    [Fact]
    public void A_consumer_cancelled_while_its_delivery_was_not_is_transient_and_counts_as_a_remote_failure()
    {
        var cancelled = new ConsumerCanceledException("The operation was canceled by the consumer: ChargePaymentConsumer");

        Assert.True(FailureClassifier.IsTransient(cancelled));
        // Not the worker's own outage: an endpoint that counts only that (webhooks) does not pause for it.
        Assert.False(FailureClassifier.IsWorkerOutage(cancelled));
    }

    [Fact]
    public void A_cancellation_by_a_shutdown_is_not_transient()
    {
        Assert.False(FailureClassifier.IsTransient(new OperationCanceledException(new CancellationToken(canceled: true))));
        Assert.False(FailureClassifier.IsTransient(new TaskCanceledException()));
    }
}
