using System.Diagnostics;
using Conveyor.Cli;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Cli;

/// <summary>
/// The conveyor process's stdout on a device or file that refuses the write (a full disk: <c>&gt; /dev/full</c>, ENOSPC):
/// the command fails with one line on stderr saying why and a non-zero exit code, as any other failure. The write's
/// IOException went unhandled: a stack trace, and the runtime's abort (134).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class CliOutputFailureTests
{
    [Theory]
    [InlineData("--version")]
    [InlineData("--help")]
    public async Task Output_that_cannot_be_written_fails_with_one_line_on_stderr(string argument)
    {
        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, RedirectStandardError = true };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("""exec dotnet "$1" "$2" >/dev/full""");
        start.ArgumentList.Add("sh");
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Conveyor.Cli.dll"));
        start.ArgumentList.Add(argument);
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start sh");
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var stderr = await process.StandardError.ReadToEndAsync(deadline.Token);
        await process.WaitForExitAsync(deadline.Token);

        Assert.Equal(ExitCodes.OperationFailed, process.ExitCode);
        Assert.Equal("conveyor: could not write standard output: No space left on device\n", stderr);
    }

    /// <summary>
    /// Started with stderr closed (<c>2&gt;&amp;-</c>), the command still ends with its exit code, here a usage error's 2:
    /// what it had to say has nowhere to go. The write's exception (EBADF, an UnauthorizedAccessException) went unhandled,
    /// and the runtime aborted (134).
    /// </summary>
    [Fact]
    public async Task A_closed_stderr_keeps_the_commands_exit_code()
    {
        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("""exec dotnet "$1" queues --limit >/dev/null 2>&-""");
        start.ArgumentList.Add("sh");
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Conveyor.Cli.dll"));
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start sh");
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        await process.WaitForExitAsync(deadline.Token);

        Assert.Equal(ExitCodes.Usage, process.ExitCode);
    }
}
