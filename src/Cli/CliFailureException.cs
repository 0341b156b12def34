namespace Conveyor.Cli;

/// <summary>Ends a command with a message on stderr and the given exit code.</summary>
public sealed class CliFailureException(int exitCode, string message) : Exception(message)
{
    public int ExitCode { get; } = exitCode;
}
