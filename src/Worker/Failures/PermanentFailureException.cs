namespace Conveyor.Worker.Failures;

/// <summary>
/// Retrying cannot help: invalid input, a business rule, a 4xx from the remote side.
/// The message skips every retry and goes to <c>_error</c>.
/// </summary>
public sealed class PermanentFailureException : Exception
{
    public PermanentFailureException(string message) : base(message) { }

    public PermanentFailureException(string message, Exception innerException) : base(message, innerException) { }

    public PermanentFailureException() { }
}
