using System.Net;
using System.Text;
using System.Text.Json;
using Conveyor.Cli;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Cli;

/// <summary>
/// The CLI's switches (<c>--dry-run</c>, <c>--no-wait</c>, <c>--json</c>, <c>--body</c>, <c>--wait</c> of <c>operation</c>,
/// <c>--follow</c>) take no following word. The parser read a following <c>true</c> or <c>false</c> as the switch's value, so
/// <c>conveyor move q_error --dry-run false</c>, which says "dry run", moved every message. Such a word is a usage error now
/// (2, nothing sent); <c>--dry-run=false</c>, which cannot be misread, still says what it says.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class CliSwitchTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    private const string OperationId = "0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182";

    [Theory]
    [InlineData($"move {ErrorQueueKit.ChargeErrors} --dry-run false", "false")]
    [InlineData($"move {ErrorQueueKit.ChargeErrors} --dry-run False", "False")]
    [InlineData($"move {ErrorQueueKit.ChargeErrors} --dry-run true", "true")]
    [InlineData($"move --dry-run false {ErrorQueueKit.ChargeErrors}", "false")]
    [InlineData($"purge {ErrorQueueKit.ChargeErrors} --dry-run false --confirm {ErrorQueueKit.ChargeErrors}", "false")]
    public async Task A_dry_run_followed_by_a_true_or_false_word_is_a_usage_error_and_moves_nothing(string command, string word)
    {
        for (var i = 0; i < 3; i++)
        {
            await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        }

        var run = await RunAsync(command.Split(' '));

        Assert.True(run.ExitCode == ExitCodes.Usage, $"{run.ExitCode}: {run.Err}");
        Assert.Contains($"--dry-run is a switch: it takes no value, and '{word}' after it is refused", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
        Assert.Equal(3u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
        // Nothing was sent: no operation, not even a dry run.
        var operations = await RunAsync("operations", "--json");
        Assert.Equal(0, JsonDocument.Parse(operations.Out).RootElement.GetArrayLength());
    }

    /// <summary>The switch alone is a dry run; its explicit form, <c>--dry-run=false</c>, is not, as it says.</summary>
    [Fact]
    public async Task The_dry_run_switch_alone_is_a_dry_run_and_its_explicit_false_form_moves()
    {
        for (var i = 0; i < 2; i++)
        {
            await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        }

        var dryRun = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--dry-run");
        Assert.True(dryRun.ExitCode == ExitCodes.Ok, dryRun.Err);
        Assert.Contains("would have moved 2 message(s)", dryRun.Out, StringComparison.Ordinal);
        Assert.Equal(2u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));

        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--dry-run=false");
        Assert.True(move.ExitCode == ExitCodes.Ok, move.Err);
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(2u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    /// <summary>Every switch of every command, followed by a true or false word or given twice: a usage error, and nothing sent.</summary>
    [Theory]
    [InlineData("queues --json false", "--json")]
    [InlineData("messages q_error --body true", "--body")]
    [InlineData("groups q_error --json FALSE", "--json")]
    [InlineData("move q_error --no-wait false", "--no-wait")]
    [InlineData("purge q_error --confirm q_error --no-wait true", "--no-wait")]
    [InlineData($"operation {OperationId} --wait false", "--wait")]
    [InlineData("jobs --follow false", "--follow")]
    [InlineData("audit --json true", "--json")]
    [InlineData("move q_error --dry-run --dry-run=false", "--dry-run")]
    [InlineData("jobs --json --json", "--json")]
    public async Task A_switch_given_a_true_or_false_word_or_given_twice_is_a_usage_error_and_sends_nothing(string command, string option)
    {
        var api = new Counting();
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = "http://conveyor.invalid/",
            [CliContext.ApiKeyVariable] = "a-key",
        };

        var exitCode = await CliApp.RunAsync(command.Split(' '), stdout, stderr, api, environment);

        Assert.True(exitCode == ExitCodes.Usage, $"{exitCode}: {stderr}");
        Assert.StartsWith($"conveyor: {option} ", stderr.ToString(), StringComparison.Ordinal);
        Assert.Equal(0, api.Requests);
        Assert.Equal("", stdout.ToString());
    }

    private async Task<CliRun> RunAsync(params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?> { [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey };
        var exitCode = await CliApp.RunAsync([.. args, "--api", App.BaseAddress.ToString()], stdout, stderr, environment: environment);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    private sealed record CliRun(int ExitCode, string Out, string Err);

    /// <summary>Answers every request with an empty list and counts them, for a line that must send nothing.</summary>
    private sealed class Counting : HttpMessageHandler
    {
        private int _requests;

        public int Requests => Volatile.Read(ref _requests);

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _requests);
            return Task.FromResult(new HttpResponseMessage(HttpStatusCode.OK) { Content = new StringContent("[]", Encoding.UTF8, "application/json") });
        }
    }
}
