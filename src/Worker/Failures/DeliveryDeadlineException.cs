namespace Conveyor.Worker.Failures;

/// <summary>
/// A long job's run was stopped because its delivery was about to reach RabbitMQ's consumer_timeout
/// (<see cref="Messaging.DeliveryDeadline"/>). The attempt failed for lack of time, not for what it
/// did: the message is not retried in memory (its delivery has no time left for that) but stored
/// for a delayed redelivery, which brings a fresh delivery with the whole timeout, while the
/// redelivery budget lasts; then it goes to <c>_error</c>.
/// </summary>
public sealed class DeliveryDeadlineException : Exception
{
    public DeliveryDeadlineException() { }

    public DeliveryDeadlineException(string message) : base(message) { }

    public DeliveryDeadlineException(string message, Exception innerException) : base(message, innerException) { }
}
