using System.Diagnostics;
using Conveyor.Cli;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Cli;

/// <summary>
/// The conveyor process's stdout redirected to a file that others write too (<c>{ date; conveyor queues; } &gt; report</c>,
/// <c>conveyor move … &gt; move.log 2&gt;&amp;1</c>): what it writes goes after what was written before it and before what
/// is written after it, as any program's does. Written through a stream of its own on the descriptor (to notice a closed
/// pipe), its writes went at a position of their own, from where the file stood when it started, and did not move the
/// file's shared one: the next writer, the shell or its own stderr, wrote over the start of its output.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class CliOutputFileTests
{
    [Fact]
    public async Task Output_to_a_file_shared_with_other_writers_keeps_everyone_s_lines_in_order()
    {
        var file = Path.Combine(Path.GetTempPath(), $"conveyor-output-{Guid.NewGuid():N}.txt");
        try
        {
            var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
            // One open file for the shell's stdout and stderr and for the conveyor process's, as `> file 2>&1` gives them.
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add("""exec >"$1" 2>&1; echo before; dotnet "$2" --version; echo after""");
            start.ArgumentList.Add("sh");
            start.ArgumentList.Add(file);
            start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Conveyor.Cli.dll"));
            using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start sh");
            using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            await process.WaitForExitAsync(deadline.Token);

            Assert.Equal(0, process.ExitCode);
            Assert.Equal($"before\n{CliApp.Version}\nafter\n", await File.ReadAllTextAsync(file));
        }
        finally
        {
            File.Delete(file);
        }
    }
}
