namespace Conveyor.Cli;

/// <summary>Ends a command with a message on stderr and the given exit code.</summary>
public sealed class CliFailureException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;

    /// <summary>
    /// For a failure without an answer (<see cref="ExitCodes.Unreachable"/>) of a request that changes something: the
    /// request had gone out before it failed (the connection broke, no answer came in time, or a gateway answered 502 or
    /// 504), so the Api may have acted on it. False when it never left: a refused connection, an unknown name.
    /// </summary>
    public bool RequestSent { get; init; }
}
