using Conveyor.Storage;

namespace Conveyor.Worker.Failures;

/// <summary>
/// A message whose key the inbox has applied already from a command that said something else (ADR
/// 0011): not a duplicate, so not acked unapplied, and not retried (the applied command stands
/// whatever happens next). It goes to <c>_error</c> with this reason and leaves the job as it is.
/// </summary>
public sealed class IdempotencyConflictException : Exception
{
    public IdempotencyConflictException(string consumerId, string key, byte[]? applied, byte[]? arrived)
        : base($"Key '{key}' of {consumerId} was applied already from a command with other content " +
               $"(fingerprint {PayloadFingerprint.Describe(applied)} applied, {PayloadFingerprint.Describe(arrived)} here); this message was not applied. " +
               "If it is a job of its own, send it under a new key; if it replaces the applied one, that one must be undone first; otherwise purge it.")
    {
    }

    public IdempotencyConflictException() { }

    public IdempotencyConflictException(string message) : base(message) { }

    public IdempotencyConflictException(string message, Exception innerException) : base(message, innerException) { }
}
