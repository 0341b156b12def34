namespace Conveyor.Worker.Failures;

/// <summary>
/// The remote side may succeed later (timeout, 408, 425, 429, 409 and 421 from a remote side sent an Idempotency-Key, 5xx but a webhook receiver's 501, 505 and 510). <see cref="RetryAfter"/> is what
/// the remote side asked for, when it said.
/// </summary>
public sealed class TransientFailureException : Exception
{
    public TransientFailureException(string message, TimeSpan? retryAfter = null, Exception? innerException = null)
        : base(message, innerException) => RetryAfter = retryAfter;

    public TransientFailureException() { }

    public TransientFailureException(string message) : base(message) { }

    public TransientFailureException(string message, Exception innerException) : base(message, innerException) { }

    public TimeSpan? RetryAfter { get; }
}
