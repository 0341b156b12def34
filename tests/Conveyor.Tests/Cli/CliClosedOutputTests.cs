using System.Diagnostics;
using System.Text;
using Conveyor.Cli;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Tests.Cli;

/// <summary>
/// <c>conveyor jobs --follow | head -1</c>: the conveyor process, its stdout a pipe whose reader goes away, ends with
/// <see cref="ExitCodes.OutputClosed"/> and one line on stderr, no stack trace. .NET's console drops what is written to a
/// closed pipe without a word, so the feed went on polling, and writing to nobody, until killed: with jobs coming as with
/// none (the header was the one line <c>head</c> took, and nothing more was written for it to fail on).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class CliClosedOutputTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    /// <summary>No job to list: nothing is written after the header, and the feed ends all the same, long before its interval.</summary>
    [Fact]
    public async Task Following_no_jobs_ends_once_its_output_is_closed()
    {
        var (exitCode, stderr) = await RunClosingOutputAsync(["jobs", "--follow", "--interval", "3600", "--api", App.BaseAddress.ToString()]);

        Assert.True(exitCode == ExitCodes.OutputClosed, $"{exitCode}: {stderr}");
        Assert.Contains("standard output was closed", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled", stderr, StringComparison.Ordinal);
    }

    /// <summary>Jobs coming all the time (every page full): the first write after the reader went away ends it.</summary>
    [Fact]
    public async Task Following_jobs_that_keep_coming_ends_once_its_output_is_closed()
    {
        var page = 0;
        await using var api = await CliHostileAnswerTests.LocalServer.StartAsync(async context =>
        {
            var n = Interlocked.Increment(ref page);
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(
                $$"""{"items":[{"jobId":"{{Guid.NewGuid()}}","kind":"charge-payment","status":"queued","attempts":0},{"jobId":"{{Guid.NewGuid()}}","kind":"charge-payment","status":"queued","attempts":0}],"nextCursor":"c{{n}}"}""");
        });

        var (exitCode, stderr) = await RunClosingOutputAsync(["jobs", "--follow", "--limit", "2", "--api", api.Address.ToString()]);

        Assert.True(exitCode == ExitCodes.OutputClosed, $"{exitCode}: {stderr}");
        Assert.Contains("standard output was closed", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled", stderr, StringComparison.Ordinal);
    }

    /// <summary>
    /// Starts the conveyor process with <paramref name="args"/>, reads the first line of its stdout, as <c>head -1</c> does,
    /// and closes the pipe; then waits (generously) for it to end. Its exit code and stderr.
    /// </summary>
    private static async Task<(int ExitCode, string Stderr)> RunClosingOutputAsync(string[] args)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Conveyor.Cli.dll"));
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment[CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey;
        start.Environment.Remove(CliContext.ApiUrlVariable);
        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start the conveyor process");
        var stderr = new StringBuilder();
        process.ErrorDataReceived += (_, line) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(line.Data);
            }
        };
        process.BeginErrorReadLine();
        try
        {
            using (var first = new CancellationTokenSource(TimeSpan.FromSeconds(60)))
            {
                Assert.NotNull(await process.StandardOutput.ReadLineAsync(first.Token));
            }

            // What head does once it has its line: the pipe's only reader goes away.
            process.StandardOutput.Dispose();
            using var ended = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            await process.WaitForExitAsync(ended.Token);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }

        lock (stderr)
        {
            return (process.ExitCode, stderr.ToString());
        }
    }
}
