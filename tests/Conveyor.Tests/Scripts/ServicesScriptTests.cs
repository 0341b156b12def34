using System.Diagnostics;
using Conveyor.Tests.Deploy;

namespace Conveyor.Tests.Scripts;

/// <summary>
/// <c>scripts/services.sh up</c> as the quick start uses it: <c>scripts/run.sh</c> and <c>scripts/test.sh</c>
/// each call it, often while servers an earlier call started are running.
/// </summary>
public sealed class ServicesScriptTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(5);

    /// <summary>
    /// The servers <c>up</c> starts once held its lock for as long as they ran (they inherited its
    /// descriptor), so on a fresh machine every later <c>up</c> waited for ever: the quick start's test
    /// command never began after its run command had started PostgreSQL. This run's servers were started
    /// by the test command's own <c>up</c>, so a second one must finish.
    /// </summary>
    [ServersStartedByScriptFact]
    public async Task Up_finishes_while_the_servers_an_earlier_up_started_are_running()
    {
        var start = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = RepositoryRoot.Path,
        };
        start.ArgumentList.Add(RepositoryRoot.Combine("scripts", "services.sh"));
        start.ArgumentList.Add("up");

        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start bash");
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        using var bound = new CancellationTokenSource(Bound);
        try
        {
            await process.WaitForExitAsync(bound.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"`scripts/services.sh up` did not finish within {Bound.TotalMinutes} minutes; it printed:\n{await errors}");
        }

        Assert.True(process.ExitCode == 0, $"`scripts/services.sh up` exited with {process.ExitCode}:\n{await errors}");
        Assert.Contains("export ConnectionStrings__Conveyor=", await output, StringComparison.Ordinal);
    }

    /// <summary>Runs only where <c>scripts/services.sh</c> started this machine's servers (not on Testcontainers or servers named by hand).</summary>
    private sealed class ServersStartedByScriptFactAttribute : FactAttribute
    {
        public ServersStartedByScriptFactAttribute()
        {
            var state = Environment.GetEnvironmentVariable("CONVEYOR_STATE_DIR") is { Length: > 0 } dir ? dir : "/tmp/conveyor-services";
            if (!File.Exists(Path.Combine(state, "postgres.started")) && !File.Exists(Path.Combine(state, "rabbitmq.started")))
            {
                Skip = $"No server here was started by scripts/services.sh (no {state}/postgres.started or rabbitmq.started)";
            }
        }
    }
}
