using System.Net;
using System.Text;
using Conveyor.Cli;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Cli;

/// <summary>
/// The commands the CLI prints for the user to run next (follow an operation, move a job back, the next page) reach the
/// Api the command line was given with <c>--api</c>. They named no Api at all, so one copied from a run with
/// <c>--api http://other:8080</c> went to <c>CONVEYOR_API_URL</c> or the default: another Api, where the operation or job it
/// names is unknown, or one of the same name is another.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class CliFollowUpCommandTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    private const string JobId = "0192f1c4-6f3a-7c6e-9b1d-000000000001";
    private const string OperationId = "0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182";

    /// <summary>An Api's address that a shell reads as more than a word: printed in single quotes.</summary>
    private const string OtherApi = "http://other.invalid:8080/~conveyor";

    /// <summary>
    /// A shell whose <c>CONVEYOR_API_URL</c> names another Api (nothing listens there), and a command given this one with
    /// <c>--api</c>: the commands it prints, pasted into that shell, act on this Api.
    /// </summary>
    [Fact]
    public async Task Printed_commands_carry_the_api_given_and_run_against_it_from_a_shell_set_for_another()
    {
        await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        var api = App.BaseAddress.ToString();

        var groups = await RunAsync("groups", ErrorQueueKit.ChargeErrors, "--api", api);
        Assert.True(groups.ExitCode == ExitCodes.Ok, groups.Err);
        var moveLargest = PrintedCommand(groups.Out, "Move the largest group back with: ");
        Assert.Equal(["--api", api], moveLargest[^2..]);
        var dryRun = await RunAsync([.. moveLargest, "--dry-run"]);
        Assert.True(dryRun.ExitCode == ExitCodes.Ok, dryRun.Err);
        Assert.Contains("would have moved 2 message(s)", dryRun.Out, StringComparison.Ordinal);

        var started = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--no-wait", "--api", api);
        Assert.True(started.ExitCode == ExitCodes.StillRunning, started.Err);
        var follow = await RunAsync(PrintedCommand(started.Err, "Follow it with: "));
        Assert.True(follow.ExitCode == ExitCodes.Ok, follow.Err);
        Assert.Contains("moved 2 message(s)", follow.Out, StringComparison.Ordinal);
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>A command, the status of the job the stand-in Api shows it, and what its printed command follows.</summary>
    public static TheoryData<string, string, string> Hints => new()
    {
        { $"job {JobId}", "dead-lettered", "Move it back with: " },
        { $"job {JobId}", "succeeded", "See what it did with: " },
        { $"job {JobId}", "retry-scheduled", "Run it now with: " },
        { $"job {JobId}", "queued", "Cancel it with: " },
        { $"result {JobId} --wait 1", "dead-lettered", "See why with: " },
        { $"run-now {JobId}", "scheduled", "Follow it with: " },
        { "groups q_error", "", "Move the largest group back with: " },
        { "jobs --limit 1", "queued", "Next page: " },
        { "move q_error --no-wait", "", "Follow it with: " },
    };

    /// <summary>
    /// Each hint, given <c>--api</c> (an address a shell reads as more than a word), ends with it, quoted; run with the Api's
    /// address from the environment, it names none, as the shell it is pasted into has that address.
    /// </summary>
    [Theory]
    [MemberData(nameof(Hints))]
    public async Task Every_printed_command_carries_the_api_option_it_was_given(string command, string status, string prefix)
    {
        var given = await RunWithAnswersAsync([.. command.Split(' '), "--api", OtherApi], status, environmentUrl: null);
        Assert.Equal(["--api", OtherApi], PrintedCommand(given.Out + given.Err, prefix)[^2..]);
        Assert.Contains($"--api '{OtherApi}'", given.Out + given.Err, StringComparison.Ordinal);

        var fromEnvironment = await RunWithAnswersAsync(command.Split(' '), status, environmentUrl: OtherApi);
        Assert.DoesNotContain("--api", PrintedCommand(fromEnvironment.Out + fromEnvironment.Err, prefix));
    }

    /// <summary>The words of the command a line of <paramref name="text"/> printed after <paramref name="prefix"/>, as a POSIX shell splits them.</summary>
    private static string[] PrintedCommand(string text, string prefix)
    {
        var start = text.IndexOf(prefix + "conveyor ", StringComparison.Ordinal);
        Assert.True(start >= 0, text);
        var line = text[(start + prefix.Length)..].Split('\n')[0].TrimEnd();
        var words = new List<string>();
        var word = new StringBuilder();
        var inWord = false;
        for (var i = 0; i < line.Length; i++)
        {
            if (line[i] == '\'')
            {
                var end = line.IndexOf('\'', i + 1);
                Assert.True(end > i, $"unclosed quote: {line}");
                word.Append(line, i + 1, end - i - 1);
                (i, inWord) = (end, true);
            }
            else if (line[i] == ' ')
            {
                if (inWord)
                {
                    words.Add(word.ToString());
                    (word, inWord) = (new StringBuilder(), false);
                }
            }
            else
            {
                Assert.DoesNotContain(line[i], "\"$`;&|<>*?()\\");
                word.Append(line[i]);
                inWord = true;
            }
        }

        if (inWord)
        {
            words.Add(word.ToString());
        }

        Assert.Equal("conveyor", words[0]);
        return [.. words.Skip(1)];
    }

    /// <summary>
    /// The CLI in a shell whose <c>CONVEYOR_API_URL</c> names another Api, where nothing listens: what reaches this one
    /// was told so with <c>--api</c>.
    /// </summary>
    private static async Task<CliRun> RunAsync(params string[] args)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = "http://127.0.0.1:9/",
            [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey,
        };
        var exitCode = await CliApp.RunAsync(args, stdout, stderr, environment: environment);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>The CLI, its requests answered by a stand-in Api that shows a job in <paramref name="status"/>.</summary>
    private static async Task<CliRun> RunWithAnswersAsync(string[] args, string status, string? environmentUrl)
    {
        using var api = new StandIn(request => Answer(request, status));
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = environmentUrl,
            [CliContext.ApiKeyVariable] = "a-key",
        };
        var exitCode = await CliApp.RunAsync(args, stdout, stderr, api, environment);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    private static HttpResponseMessage Answer(HttpRequestMessage request, string status)
    {
        var path = request.RequestUri!.AbsolutePath;
        var job = $$"""{"jobId":"{{JobId}}","kind":"charge-payment","status":"{{status}}","attempts":0}""";
        var body =
            path.EndsWith("/groups", StringComparison.Ordinal) ? """{"examined":1,"queueDepth":1,"groups":[{"groupId":"3f9a0c41d2e7","count":1}]}"""
            : path.EndsWith("/move", StringComparison.Ordinal) ? $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}"""
            : path.EndsWith("/api/jobs", StringComparison.Ordinal) ? $$"""{"items":[{{job}}],"nextCursor":"abc"}"""
            : job;
        return new HttpResponseMessage(request.Method == HttpMethod.Post ? HttpStatusCode.Accepted : HttpStatusCode.OK)
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
    }

    private sealed record CliRun(int ExitCode, string Out, string Err);

    private sealed class StandIn(Func<HttpRequestMessage, HttpResponseMessage> answer) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(answer(request));
    }
}
