using Conveyor.Contracts;

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

    /// <summary>
    /// Throws when a command breaks its contract's rules (<see cref="ContractRules"/>, the ones the Api
    /// applies): a producer that publishes straight to RabbitMQ is checked like a request to the Api.
    /// </summary>
    public static void ThrowIfInvalid(string contract, IReadOnlyList<ContractViolation> violations)
    {
        if (violations.Count > 0)
        {
            throw new PermanentFailureException($"Invalid {contract}: {ContractViolation.Describe(violations)}");
        }
    }
}
