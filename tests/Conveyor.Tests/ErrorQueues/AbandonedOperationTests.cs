using Conveyor.Cli;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// The Api process running a move is killed, and no other move is started: the operation must not read
/// "running" forever, and a CLI waiting for it must stop with the exit code of an interrupted operation.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class AbandonedOperationTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int Messages = 600;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_move_whose_Api_was_killed_is_reported_interrupted_and_a_waiting_cli_stops_with_exit_code_1()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        for (var i = 0; i < Messages; i++)
        {
            await broker.DeadLetterChargeAsync("System.TimeoutException", "The payment gateway timed out");
        }

        // Throttled, so the move is still running when it is looked at and when the process is killed.
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in ErrorQueueKit.ApiSettings(maxMessagesPerSecond: 50))
        {
            settings[key] = value;
        }

        Guid id;
        await using (var child = await ChildApi.StartAsync(settings))
        {
            using var admin = ErrorQueueKit.Client(child.BaseAddress);
            using var started = await admin.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });
            id = (await started.JsonAsync()).GetProperty("operationId").GetGuid();
            await Eventually.AssertAsync(async () =>
            {
                var progress = await admin.GetJsonAsync($"/api/operations/{id}");
                Assert.True(progress.GetProperty("state").GetString() == "running", $"the move ended early: {progress}\n{child.Output}");
                Assert.True(progress.GetProperty("moved").GetInt64() >= 10, $"{progress}\n{child.Output}");
            });

            // While it runs: shown, or waited for with a timeout, the CLI says so with its own exit code.
            Assert.Equal(ExitCodes.StillRunning, (await RunCliAsync(child.BaseAddress, "operation", id.ToString())).ExitCode);
            var timedOut = await RunCliAsync(child.BaseAddress, "operation", id.ToString(), "--wait", "--timeout", "1");
            Assert.True(timedOut.ExitCode == ExitCodes.StillRunning, timedOut.Err);

            await child.KillAsync();
        }

        // Another replica, reading the same database; nobody starts another move on the queue.
        var reader = ErrorQueueKit.ApiSettings();
        reader["ErrorQueues:AbandonedAfterSeconds"] = "2";
        await using var api = await fixture.StartApiAsync(reader);
        var waiting = RunCliAsync(api.BaseAddress, "operation", id.ToString(), "--wait", "--timeout", "120");

        using var client = ErrorQueueKit.Client(api.BaseAddress);
        var operation = await client.WaitForOperationAsync(id, TimeSpan.FromSeconds(30));
        Assert.Equal("interrupted", operation.GetProperty("state").GetString());
        Assert.Contains("stopped before it finished", operation.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.True(operation.TryGetProperty("finishedAt", out var finished) && finished.ValueKind != System.Text.Json.JsonValueKind.Null);
        // Where its messages went, as its progress recorded it: the audit's "to" of a move that never saved its result.
        Assert.True(operation.GetProperty("targets").GetProperty(ErrorQueueKit.ChargeQueue).GetInt64() >= 10, operation.ToString());

        var waited = await waiting;
        Assert.True(waited.ExitCode == ExitCodes.OperationFailed, $"{waited.ExitCode}: {waited.Err}");
        Assert.Contains("interrupted", waited.Out, StringComparison.Ordinal);

        // The kill lost nothing: what the dead connection had not acknowledged went back to the error queue.
        await Eventually.AssertAsync(async () =>
        {
            var total = await broker.CountAsync(ErrorQueueKit.ChargeErrors) + await broker.CountAsync(ErrorQueueKit.ChargeQueue);
            Assert.True(total >= Messages, $"only {total} of {Messages} messages left");
        });
    }

    private static async Task<CliRun> RunCliAsync(Uri api, params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?> { [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey };
        var exitCode = await CliApp.RunAsync([.. args, "--api", api.ToString()], stdout, stderr, environment: environment);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    private sealed record CliRun(int ExitCode, string Out, string Err);
}
