using Conveyor.Contracts;
using Conveyor.Worker.Messaging;
using MassTransit;

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
    /// The field names as they arrived count too (<see cref="ContractFields"/>): a field the contract does
    /// not have, or one given twice, which the deserialized command no longer shows.
    /// </summary>
    public static void ThrowIfInvalid<T>(ConsumeContext<T> context, IReadOnlyList<ContractViolation> violations)
        where T : class
    {
        var fields = EnvelopeReader.FieldProblems<T>(context.ReceiveContext.Body.GetBytes());
        if (fields.Count > 0 || violations.Count > 0)
        {
            throw new PermanentFailureException($"Invalid {typeof(T).Name}: {ContractViolation.Describe(fields.Concat(violations))}");
        }
    }
}
