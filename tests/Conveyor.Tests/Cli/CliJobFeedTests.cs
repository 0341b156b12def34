using System.Text.Json;
using System.Text.RegularExpressions;
using Conveyor.Cli;
using Conveyor.Contracts;
using Conveyor.Tests.Api;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Cli;

/// <summary>
/// <c>conveyor jobs</c> over the Api's two listings: a page and the command for the next one, by the cursor the Api gives,
/// and <c>--order oldest --follow</c>, the feed polled until Ctrl+C. Against a running Api whose settle horizon
/// (<c>Jobs:ListingSettleSeconds</c>, ADR 0013) is 3 s, so that jobs submitted by the test reach the oldest-first listing soon.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed partial class CliJobFeedTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        var settings = ErrorQueueKit.ApiSettings();
        settings["Jobs:ListingSettleSeconds"] = "3";
        settings["RateLimiting:Enabled"] = "false";
        _api = await fixture.StartApiAsync(settings);
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    /// <summary>
    /// The jobs command printed nothing to go on with: newest first it said only "More jobs follow; raise --limit or narrow
    /// the filters", and had no order nor cursor option, so neither an operator nor a script could get past the first page,
    /// nor follow new jobs. Walked by the command each page prints (run back as printed), the oldest-first listing gives
    /// every job once in the order submitted, then the jobs submitted after that, once settled; by --json's nextCursor alike.
    /// </summary>
    [Fact]
    public async Task Oldest_first_pages_walked_by_the_printed_next_page_command_list_each_job_once_then_the_newer_ones()
    {
        var first = await SubmitAsync(5);
        await Eventually.AssertAsync(async () => Assert.Equal(first, JobIds(await RunAsync("jobs", "--order", "oldest", "--json"), first)));

        var seen = new List<Guid>();
        string[] command = ["jobs", "--order", "oldest", "--limit", "2"];
        while (true)
        {
            var page = await RunAsync(command);
            Assert.True(page.ExitCode == ExitCodes.Ok, page.Err);
            seen.AddRange(JobIds(page, first));
            command = NextPageCommand(page.Err);
            Assert.True(seen.Count <= first.Count, string.Join(", ", seen));
            if (page.Err.Contains("No more settled jobs for now", StringComparison.Ordinal))
            {
                break;
            }
        }

        Assert.Equal(first, seen);

        // Jobs submitted after the walk reached the horizon are listed by its last command once they settle, and no
        // earlier job again.
        var later = await SubmitAsync(3);
        Guid[] all = [.. first, .. later];
        await Eventually.AssertAsync(async () =>
        {
            var page = await RunAsync(command);
            Assert.True(page.ExitCode == ExitCodes.Ok, page.Err);
            seen.AddRange(JobIds(page, all));
            command = NextPageCommand(page.Err);
            Assert.Equal(all.Length, seen.Count);
        });
        Assert.Equal(all, seen);

        // With --json, the Api's nextCursor is in the page, and --after takes it back.
        var walked = new List<Guid>();
        string? cursor = null;
        while (walked.Count < all.Length)
        {
            var page = await RunAsync(["jobs", "--order", "oldest", "--limit", "3", "--json", .. cursor is null ? Array.Empty<string>() : ["--after", cursor]]);
            Assert.True(page.ExitCode == ExitCodes.Ok, page.Err);
            var json = JsonDocument.Parse(page.Out).RootElement;
            walked.AddRange(json.GetProperty("items").EnumerateArray().Select(j => j.GetProperty("jobId").GetGuid()));
            cursor = json.GetProperty("nextCursor").GetString();
            Assert.NotNull(cursor);
        }

        Assert.Equal(all, walked);
        var end = await RunAsync("jobs", "--order", "oldest", "--json", "--after", cursor!);
        Assert.Empty(JsonDocument.Parse(end.Out).RootElement.GetProperty("items").EnumerateArray());
    }

    /// <summary>Newest first, a page that has more after it prints the command for the next one, which lists the older jobs.</summary>
    [Fact]
    public async Task Newest_first_a_full_page_prints_the_command_for_the_older_jobs()
    {
        var jobs = await SubmitAsync(3);

        var first = await RunAsync("jobs", "--kind", "charge-payment", "--limit", "2");
        var next = await RunAsync(NextPageCommand(first.Err));

        Assert.Equal((ExitCodes.Ok, ExitCodes.Ok), (first.ExitCode, next.ExitCode));
        Assert.Contains("More jobs follow. Next page: conveyor jobs --kind charge-payment --limit 2 --after ", first.Err, StringComparison.Ordinal);
        Assert.Equal([jobs[2], jobs[1]], JobIds(first, jobs));
        Assert.Equal([jobs[0]], JobIds(next, jobs));
        Assert.DoesNotContain("Next page", next.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// <c>--follow</c> prints the jobs there are and then each job as it settles, each once, in the order submitted, until
    /// Ctrl+C, which ends it with 130 and the command that resumes after the last job printed. Oldest first, the only order
    /// it can follow, with <c>--order oldest</c> or without <c>--order</c> (which ended with 2, "--follow needs --order oldest").
    /// </summary>
    [Theory]
    [InlineData(false, true)]
    [InlineData(true, true)]
    [InlineData(false, false)]
    public async Task Follow_prints_each_job_once_as_it_settles_until_ctrl_c_and_says_how_to_resume(bool json, bool orderGiven)
    {
        var before = await SubmitAsync(3);
        using var interrupt = new CancellationTokenSource();
        var stdout = new SharedText();
        var stderr = new SharedText();
        string[] args =
        [
            "jobs", .. orderGiven ? new[] { "--order", "oldest" } : [], "--follow", "--interval", "1", "--limit", "2", .. json ? new[] { "--json" } : [],
            "--api", _api.BaseAddress.ToString(),
        ];
        var following = CliApp.RunAsync(args, stdout.Writer, stderr.Writer, environment: Environment(), cancellationToken: interrupt.Token);

        await Eventually.AssertAsync(() => Assert.Equal(before, Printed(stdout.ToString(), before, json)));
        var after = await SubmitAsync(3);
        Guid[] all = [.. before, .. after];
        await Eventually.AssertAsync(() => Assert.Equal(all, Printed(stdout.ToString(), all, json)));
        Assert.False(following.IsCompleted, stderr.ToString());
        await interrupt.CancelAsync();
        var exitCode = await following;

        Assert.Equal(ExitCodes.Interrupted, exitCode);
        Assert.Equal(all, Printed(stdout.ToString(), all, json));
        var resume = ResumeCommand(stderr.ToString());
        Assert.Equal(
            $"jobs --limit 2{(orderGiven ? " --order oldest" : "")} --follow --interval 1{(json ? " --json" : "")} --after", string.Join(' ', resume[..^3]));
        Assert.Equal(["--api", _api.BaseAddress.ToString()], resume[^2..]);
        // It resumes after the last job printed: nothing again.
        var rest = await RunAsync("jobs", "--order", "oldest", "--json", "--after", resume[^3]);
        Assert.Empty(JsonDocument.Parse(rest.Out).RootElement.GetProperty("items").EnumerateArray());
    }

    /// <summary>
    /// <c>--status dead-lettered --follow</c> reads like an alert on failed jobs, but the status is matched as each job settles
    /// (ADR 0013), so a job that dead-letters later is never listed: said once on stderr (it said nothing), the feed going on.
    /// </summary>
    [Fact]
    public async Task Following_one_status_says_that_a_job_reaching_it_later_is_not_listed()
    {
        using var interrupt = new CancellationTokenSource();
        var stdout = new SharedText();
        var stderr = new SharedText();
        var following = CliApp.RunAsync(
            ["jobs", "--status", "dead-lettered", "--follow", "--interval", "1", "--api", _api.BaseAddress.ToString()],
            stdout.Writer, stderr.Writer, environment: Environment(), cancellationToken: interrupt.Token);

        await Eventually.AssertAsync(() => Assert.Contains(
            "Note: --status dead-lettered is matched when a job is listed, as it settles", stderr.ToString(), StringComparison.Ordinal));
        Assert.False(following.IsCompleted, stderr.ToString());
        await interrupt.CancelAsync();
        Assert.Equal(ExitCodes.Interrupted, await following);
        Assert.Single(Regex.Matches(stderr.ToString(), "Note: --status"));
    }

    /// <summary>
    /// Options refused before anything is sent, each naming itself, as the CLI's other usage errors; a cursor the Api refuses
    /// is named as the option that gave it, <c>--after</c>, with the Api's reason (it was named <c>cursor</c>, a word of the Api's
    /// query that no option of the CLI has).
    /// </summary>
    [Theory]
    [InlineData("jobs --order latest", "--order must be newest (the default) or oldest; 'latest' is not.")]
    [InlineData("jobs --order newest --follow", "--follow cannot be given --order newest")]
    [InlineData("jobs --follow --order newest --kind charge-payment", "--follow cannot be given --order newest")]
    [InlineData("jobs --order oldest --follow --interval 0", "--interval must be from 1 to 3600 seconds.")]
    [InlineData("jobs --order oldest --follow --interval 3601", "--interval must be from 1 to 3600 seconds.")]
    [InlineData("jobs --order oldest --interval 5", "--interval needs --follow.")]
    [InlineData("jobs --order oldest --retry-for 60", "--retry-for needs --follow.")]
    [InlineData("jobs --follow --retry-for 0", "--retry-for must be from 1 to 2592000 seconds (30 days).")]
    [InlineData("jobs --after AAAA'BBB", "--after must be a cursor a page of 'conveyor jobs' printed")]
    [InlineData("jobs --order oldest --after", "--after needs a value (CURSOR)")]
    [InlineData("jobs --order oldest --order newest", "--order is given 2 times")]
    // The Api's 400 names its query parameter (cursor), said as the option that gave it, with the Api's reason.
    [InlineData("jobs --after AAAA", "--after: Must be the nextCursor of an earlier page, unchanged.")]
    [InlineData("jobs --follow --after AAAA", "--after: Must be the nextCursor of an earlier page, unchanged.")]
    public async Task A_bad_jobs_option_is_a_usage_error_naming_it(string command, string said)
    {
        var run = await RunAsync(command.Split(' '));

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains(said, run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    private async Task<List<Guid>> SubmitAsync(int count)
    {
        var ids = new List<Guid>();
        for (var i = 0; i < count; i++)
        {
            ids.Add((await _api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))).JobId);
        }

        return ids;
    }

    /// <summary>The ids among <paramref name="known"/> that a run printed, in the order printed (a table also shows business keys).</summary>
    private static List<Guid> JobIds(CliRun run, IEnumerable<Guid> known) => Ids(run.Out, known);

    private static List<Guid> Ids(string text, IEnumerable<Guid> known)
    {
        var wanted = known.ToHashSet();
        return [.. Uuid().Matches(text).Select(m => Guid.Parse(m.Value)).Where(wanted.Contains)];
    }

    /// <summary>What <c>--follow</c> printed of <paramref name="known"/>: with --json, the items of its page lines.</summary>
    private static List<Guid> Printed(string stdout, IEnumerable<Guid> known, bool json) =>
        !json ? Ids(stdout, known)
        : [.. stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .SelectMany(line => JsonDocument.Parse(line).RootElement.GetProperty("items").EnumerateArray())
            .Select(job => job.GetProperty("jobId").GetGuid())
            .Where(known.ToHashSet().Contains)];

    /// <summary>The arguments of the <c>conveyor jobs ...</c> command a hint line on stderr gives (its values need no quotes here).</summary>
    private static string[] NextPageCommand(string stderr)
    {
        var line = Regex.Match(stderr, @"(Next page|Newer ones, once settled): conveyor (?<args>jobs [^\r\n(]*)").Groups["args"].Value.Trim();
        Assert.False(line.Length == 0, stderr);
        return line.Split(' ');
    }

    private static string[] ResumeCommand(string stderr)
    {
        var line = Regex.Match(stderr, @"Resume with: conveyor (?<args>jobs [^\r\n]*)").Groups["args"].Value.Trim();
        Assert.False(line.Length == 0, stderr);
        return line.Split(' ');
    }

    private Task<CliRun> RunAsync(params string[] args) => RunAsync(args, CancellationToken.None);

    private async Task<CliRun> RunAsync(string[] args, CancellationToken interrupt)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        // A command the CLI printed to go on with names the Api already.
        string[] withApi = args.Contains("--api") ? args : [.. args, "--api", _api.BaseAddress.ToString()];
        var exitCode = await CliApp.RunAsync(withApi, stdout, stderr, environment: Environment(), cancellationToken: interrupt);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    private static Dictionary<string, string?> Environment() => new() { [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey };

    [GeneratedRegex("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")]
    private static partial Regex Uuid();

    private sealed record CliRun(int ExitCode, string Out, string Err);
}
