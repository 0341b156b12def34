using System.Collections.Concurrent;
using System.Net;
using System.Text;
using System.Text.Json;
using Conveyor.Cli;
using Conveyor.Cli.Commands;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Spectre.Console;

namespace Conveyor.Tests.Cli;

/// <summary>
/// Answers a Conveyor Api never gives, from whatever sits at its address: control characters in its text,
/// markup in a queue name, an endless body, a redirect. None reaches the terminal raw, crashes the CLI or is
/// followed elsewhere.
/// </summary>
public sealed class CliHostileAnswerTests
{
    // Tag characters (U+E0001, U+E0041: invisible, stored as surrogate pairs) hide text as the override reorders it.
    private const string Attack = "\u001b]0;PWNED\u0007\u001b[2J\u009b31m\u202egpj.exe\U000E0001\U000E0041";
    private const string OperationId = "0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182";
    private const string FirstJob = "0192f1c4-6f3a-7c6e-9b1d-000000000001";
    private const string SecondJob = "0192f1c4-6f3a-7c6e-9b1d-000000000002";

    public static TheoryData<string, int, string> ControlCharacters => new()
    {
        { "queues", 200, $$$"""[{"name":"q{{{J(Attack)}}}_error","kind":"error","sourceQueue":"q","messages":1,"consumers":0}]""" },
        {
            "messages q_error --body", 200,
            $$$"""{"queueDepth":1,"messages":[{"messageId":"m{{{J(Attack)}}}","messageType":"A.B{{{J(Attack)}}}","exceptionType":"E{{{J(Attack)}}}","exceptionMessage":"x{{{J(Attack)}}}","stackTrace":"at A\n{{{J(Attack)}}}","bodyPreview":"{{{J(Attack)}}}"}]}"""
        },
        { "groups q_error", 200, $$$"""{"examined":1,"queueDepth":1,"groups":[{"groupId":"g{{{J(Attack)}}}","count":1,"exceptionType":"E","normalisedMessage":"{{{J(Attack)}}}"}]}""" },
        { $"job {OperationId}", 200, $$$"""{"jobId":"{{{OperationId}}}","kind":"k{{{J(Attack)}}}","status":"dead-lettered","lastError":"{{{J(Attack)}}}"}""" },
        { "jobs", 200, $$$"""{"items":[{"jobId":"{{{OperationId}}}","status":"failed","lastError":"{{{J(Attack)}}}"}]}""" },
        {
            $"operation {OperationId}", 200,
            $$$"""{"operationId":"{{{OperationId}}}","state":"running{{{J(Attack)}}}","kind":"move{{{J(Attack)}}}","queue":"{{{J(Attack)}}}","detail":"{{{J(Attack)}}}","messageIds":["{{{J(Attack)}}}"]}"""
        },
        { "operations", 200, $$$"""[{"operationId":"{{{OperationId}}}","state":"succeeded","kind":"move","targets":{"{{{J(Attack)}}}":1}}]""" },
        { "queues", 400, $$$"""{"title":"Bad{{{J(Attack)}}}","detail":"{{{J(Attack)}}}","errors":{"f{{{J(Attack)}}}":["{{{J(Attack)}}}"]}}""" },
        { "queues", 404, $$$"""{"title":"{{{J(Attack)}}}"}""" },
        { "move q_error", 409, $$$"""{"title":"Conflict","detail":"busy with {{{J(Attack)}}}"}""" },
        { $"cancel {OperationId}", 409, $$$"""{"title":"Job cannot be cancelled","detail":"Job is {{{J(Attack)}}}"}""" },
        { $"cancel {OperationId}", 200, $$$"""{"jobId":"{{{OperationId}}}","kind":"k{{{J(Attack)}}}","status":"cancelled"}""" },
        { $"run-now {OperationId}", 409, $$$"""{"title":"Job not waiting","detail":"Job is {{{J(Attack)}}}"}""" },
        { $"run-now {OperationId}", 202, $$$"""{"jobId":"{{{OperationId}}}","kind":"k{{{J(Attack)}}}","status":"scheduled{{{J(Attack)}}}"}""" },
    };

    [Theory]
    [MemberData(nameof(ControlCharacters))]
    public async Task Control_characters_in_the_apis_text_are_shown_as_escapes_never_sent_to_the_terminal(string command, int status, string body)
    {
        using var api = new Canned(_ => Respond((HttpStatusCode)status, body));

        var run = await RunAsync(command, api);

        var printed = run.Out + run.Err;
        Assert.DoesNotContain(printed, c => (char.IsControl(c) && c is not '\n' and not '\r') || c == '\u202e' || char.IsSurrogate(c));
        Assert.Contains(@"\u001B]0;PWNED\u0007\u001B[2J\u009B31m\u202Egpj.exe\U000E0001\U000E0041", printed, StringComparison.Ordinal);
    }

    /// <summary>
    /// The Api's address with a query or a fragment (a dashboard link copied with its <c>?…</c> or <c>#…</c>): the CLI's paths
    /// are relative to it, and were resolved against its last segment, so <c>https://host/conveyor?x=1</c> sent every request
    /// to <c>https://host/api/…</c>, past the path prefix, to whatever answers there. Refused naming it; nothing is sent.
    /// </summary>
    [Theory]
    [InlineData("http://conveyor.invalid/conveyor?tenant=1")]
    [InlineData("http://conveyor.invalid/conveyor#queues")]
    [InlineData("http://conveyor.invalid/?x")]
    public async Task An_api_url_with_a_query_or_a_fragment_is_a_usage_error_and_nothing_is_sent(string url)
    {
        using var api = new Counted(HttpStatusCode.OK, "[]");

        var run = await RunAsync(["queues", "--api", url], api);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains($"'{url}'", run.Err, StringComparison.Ordinal);
        Assert.Contains("query or fragment", run.Err, StringComparison.Ordinal);
        Assert.Equal(0, api.Requests);
    }

    /// <summary>An Api behind a path prefix, given with or without the last slash: every request goes under it.</summary>
    [Theory]
    [InlineData("http://conveyor.invalid/conveyor")]
    [InlineData("http://conveyor.invalid/conveyor/")]
    public async Task An_api_url_with_a_path_prefix_keeps_it_in_every_request(string url)
    {
        var paths = new ConcurrentQueue<string>();
        using var api = new Canned(request =>
        {
            paths.Enqueue(request.RequestUri!.AbsolutePath);
            return Respond(HttpStatusCode.OK, "[]");
        });

        var run = await RunAsync(["queues", "--api", url], api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Equal(["/conveyor/api/error-queues"], paths);
    }

    [Theory]
    [InlineData("--version")]
    [InlineData("-v")]
    public async Task The_version_is_printed_without_a_request(string command)
    {
        using var api = new Counted(HttpStatusCode.OK, "[]");

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Equal(CliApp.Version, run.Out.Trim());
        Assert.Matches(@"^\d+\.\d+\.\d+", CliApp.Version);
        Assert.Equal(0, api.Requests);
    }

    [Theory]
    [InlineData("messages q_error --limit 99999999999", "'99999999999' is not a valid value for --limit")]
    [InlineData("move q_error --job-id nope", "'nope' is not a valid value for --job-id")]
    [InlineData("move q_error --timeout=soon", "'soon' is not a valid value for --timeout")]
    public async Task An_option_value_of_the_wrong_kind_is_a_usage_error_naming_the_option_not_a_dotnet_type(string command, string said)
    {
        using var api = new Counted(HttpStatusCode.OK, "[]");

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains(said, run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("Nullable", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("Guid", run.Err, StringComparison.Ordinal);
        Assert.Equal(0, api.Requests);
    }

    /// <summary>
    /// A value of the wrong kind for the command's argument is named as that argument, even when an option of the
    /// line has the same text as its (valid) value: <c>job 5 --wait 5</c> is a bad job id, not a bad wait.
    /// </summary>
    [Theory]
    [InlineData("job 5 --wait 5", "'5' is not a valid value for <job-id>")]
    [InlineData("operation nope", "'nope' is not a valid value for <id>")]
    [InlineData("operation 30 --wait --timeout 30", "'30' is not a valid value for <id>")]
    public async Task An_argument_value_of_the_wrong_kind_is_a_usage_error_naming_the_argument(string command, string said)
    {
        using var api = new Counted(HttpStatusCode.OK, "[]");

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains(said, run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("--wait", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("--timeout", run.Err, StringComparison.Ordinal);
        Assert.Equal(0, api.Requests);
    }

    /// <summary>
    /// A cell is cut to its column's width: never between the two halves of a character beyond U+FFFF (an emoji),
    /// whose first half alone would reach the terminal as the lone surrogate no answer may put there.
    /// </summary>
    [Theory]
    [InlineData("messages q_error", """{"queueDepth":1,"messages":[{"messageId":"m","exceptionMessage":"{0}"}]}""")]
    [InlineData("groups q_error", """{"queueDepth":1,"examined":1,"groups":[{"groupId":"g","count":1,"normalisedMessage":"{0}"}]}""")]
    [InlineData("jobs", """{"items":[{"jobId":"j","status":"dead-lettered","lastError":"{0}"}]}""")]
    public async Task A_cell_cut_to_its_width_never_splits_a_character_in_two(string command, string template)
    {
        // 78 letters, then an emoji on the 79th and 80th chars: the 80-character cell keeps 79 chars and an ellipsis.
        var text = new string('a', 78) + "\ud83d\ude00 and more";
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, template.Replace("{0}", text, StringComparison.Ordinal)));

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.DoesNotContain(run.Out, char.IsSurrogate);
        Assert.Contains(new string('a', 78) + "…", run.Out, StringComparison.Ordinal);
    }

    /// <summary>
    /// The Api's JSON drops a time's trailing zeros and may carry an offset: every view shows its times in UTC with all
    /// seven fraction digits, so a column lines up and each time stays exact; a time field holding anything else is
    /// shown as it is, escaped.
    /// </summary>
    [Theory]
    [InlineData("messages q_error", """{"queueDepth":2,"messages":[{"messageId":"m1","faultedAt":"{0}"},{"messageId":"m2","faultedAt":"{1}"}]}""")]
    [InlineData("groups q_error", """{"queueDepth":2,"examined":2,"groups":[{"groupId":"g","count":2,"firstSeen":"{0}","lastSeen":"{1}"}]}""")]
    [InlineData("jobs", """{"items":[{"jobId":"j1","status":"queued","createdAt":"{0}","updatedAt":"{1}"}]}""")]
    [InlineData($"job {OperationId}", $$"""{"jobId":"{{OperationId}}","kind":"k","status":"succeeded","createdAt":"{0}","finishedAt":"{1}"}""")]
    [InlineData("operations", $$"""[{"operationId":"{{OperationId}}","state":"succeeded","kind":"move","createdAt":"{0}"},{"operationId":"{{OperationId}}","state":"succeeded","kind":"move","createdAt":"{1}"}]""")]
    [InlineData($"operation {OperationId}", $$"""{"operationId":"{{OperationId}}","state":"succeeded","kind":"move","queue":"q_error","createdAt":"{0}","finishedAt":"{1}"}""")]
    [InlineData($"result {OperationId}", $$$"""{"jobId":"{{{OperationId}}}","kind":"charge-payment","finishedAt":"{0}","charge":{"chargedAt":"{1}"}}""")]
    [InlineData($"result {OperationId}", $$$"""{"jobId":"{{{OperationId}}}","kind":"deliver-webhook","finishedAt":"{0}","webhook":{"deliveredAt":"{1}"}}""")]
    [InlineData($"result {OperationId}", $$$"""{"jobId":"{{{OperationId}}}","kind":"generate-report","finishedAt":"{0}","report":{"completedAt":"{1}","totals":[]}}""")]
    public async Task Times_are_shown_in_utc_at_one_width_and_exact(string command, string template)
    {
        var body = template.Replace("{0}", "2026-12-05T16:40:12.5+01:00", StringComparison.Ordinal)
            .Replace("{1}", "2026-12-05T15:41:00.1234567Z", StringComparison.Ordinal);
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, body));

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        Assert.Contains("2026-12-05T15:40:12.5000000Z", run.Out, StringComparison.Ordinal);
        Assert.Contains("2026-12-05T15:41:00.1234567Z", run.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("+01:00", run.Out, StringComparison.Ordinal);

        using var hostile = new Canned(_ => Respond(HttpStatusCode.OK, template.Replace("{0}", "soon\\u001b[2J", StringComparison.Ordinal).Replace("{1}", "2026-12-05", StringComparison.Ordinal)));
        var odd = await RunAsync(command, hostile);

        Assert.True(odd.ExitCode == ExitCodes.Ok, odd.Err);
        Assert.Contains(@"soon\u001B[2J", odd.Out, StringComparison.Ordinal);
        Assert.Contains("2026-12-05", odd.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("2026-12-05T00:00", odd.Out, StringComparison.Ordinal);
    }

    /// <summary>
    /// A cancel is sent again when that may settle it: after a 409 with Retry-After (the job's row was held for a moment)
    /// and after a "try later" (429, 502, 503, 504), as reads are. A 409 without one (the job has started) ends it at
    /// once, as does a 200 that is not the cancelled job asked for.
    /// </summary>
    [Theory]
    [InlineData(409, true, 2, ExitCodes.Ok)]
    [InlineData(503, true, 2, ExitCodes.Ok)]
    [InlineData(502, false, 2, ExitCodes.Ok)]
    [InlineData(429, true, 2, ExitCodes.Ok)]
    [InlineData(409, false, 1, ExitCodes.NotFoundOrConflict)]
    [InlineData(404, false, 1, ExitCodes.NotFoundOrConflict)]
    [InlineData(500, false, 1, ExitCodes.OperationFailed)]
    public async Task A_cancel_is_sent_again_only_when_that_may_settle_it(int firstStatus, bool retryAfter, int requests, int exitCode)
    {
        var sent = new ConcurrentQueue<HttpMethod>();
        using var api = new Canned(request =>
        {
            sent.Enqueue(request.Method);
            if (sent.Count == 1)
            {
                var problem = $$"""{"title":"Job busy","status":{{firstStatus}},"detail":"Job {{OperationId}} is being written right now."}""";
                return retryAfter ? RespondAfter(TimeSpan.FromSeconds(1), (HttpStatusCode)firstStatus, problem) : Respond((HttpStatusCode)firstStatus, problem);
            }

            return Respond(HttpStatusCode.OK, $$"""{"jobId":"{{OperationId}}","kind":"charge-payment","status":"cancelled"}""");
        });

        var run = await RunAsync($"cancel {OperationId}", api);

        Assert.True(run.ExitCode == exitCode, run.Err);
        Assert.Equal(requests, sent.Count);
        Assert.All(sent, method => Assert.Equal(HttpMethod.Delete, method));
        if (exitCode == ExitCodes.Ok)
        {
            Assert.Contains($"Could not cancel job {OperationId}", run.Err, StringComparison.Ordinal);
            Assert.Contains($"Job {OperationId} is cancelled: it will not run.", run.Out, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal("", run.Out);
        }
    }

    /// <summary>
    /// A run-now is sent again as a cancel is (the Api makes a job due now again harmlessly): after a 409 with Retry-After
    /// and after a "try later", such as its queue full (429); a 409 without one (the job is not waiting) ends it at once,
    /// as does an answer that is not the job asked for.
    /// </summary>
    [Theory]
    [InlineData(409, true, 202, 2, ExitCodes.Ok)]
    [InlineData(429, true, 202, 2, ExitCodes.Ok)]
    [InlineData(409, false, 202, 1, ExitCodes.NotFoundOrConflict)]
    [InlineData(202, false, 202, 1, ExitCodes.UnexpectedAnswer)]
    public async Task A_run_now_is_sent_again_only_when_that_may_settle_it(int firstStatus, bool retryAfter, int thenStatus, int requests, int exitCode)
    {
        var sent = new ConcurrentQueue<HttpRequestMessage>();
        using var api = new Canned(request =>
        {
            sent.Enqueue(request);
            if (sent.Count == 1)
            {
                // A first 202 here names another job: no Conveyor Api's answer.
                var body = firstStatus == 202
                    ? $$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"scheduled"}"""
                    : $$"""{"title":"Job busy","status":{{firstStatus}},"detail":"Job {{OperationId}} is being written right now."}""";
                return retryAfter ? RespondAfter(TimeSpan.FromSeconds(1), (HttpStatusCode)firstStatus, body) : Respond((HttpStatusCode)firstStatus, body);
            }

            return Respond((HttpStatusCode)thenStatus, $$"""{"jobId":"{{OperationId}}","kind":"charge-payment","status":"retry-scheduled"}""");
        });

        var run = await RunAsync($"run-now {OperationId}", api);

        Assert.True(run.ExitCode == exitCode, run.Err);
        Assert.Equal(requests, sent.Count);
        Assert.All(sent, request =>
        {
            Assert.Equal(HttpMethod.Post, request.Method);
            Assert.Equal($"/api/jobs/{OperationId}/run-now", request.RequestUri?.AbsolutePath);
        });
        if (exitCode == ExitCodes.Ok)
        {
            Assert.Contains($"Could not run job {OperationId} now", run.Err, StringComparison.Ordinal);
            Assert.Contains($"Job {OperationId} is due now", run.Out, StringComparison.Ordinal);
        }
        else
        {
            Assert.Equal("", run.Out);
        }
    }

    /// <summary>
    /// A run-now a gateway answered 504 for may have made the job due now, and a worker may have taken it before the try
    /// that follows: that try's 409 (the job is queued) is still a conflict, but says that the first try may have done it,
    /// and how to look, instead of the Api's reason alone, which reads as if nothing had been done.
    /// </summary>
    [Theory]
    [InlineData(504, true)]
    [InlineData(502, true)]
    [InlineData(503, false)]
    public async Task A_run_now_refused_after_a_gateway_failure_says_the_first_try_may_have_done_it(int firstStatus, bool mayHaveDoneIt)
    {
        var sent = 0;
        using var api = new Canned(_ => Interlocked.Increment(ref sent) == 1
            ? firstStatus == 503
                ? Respond(HttpStatusCode.ServiceUnavailable, """{"title":"Service unavailable","status":503,"detail":"The broker is unreachable."}""")
                : Respond((HttpStatusCode)firstStatus, "<html><body>Gateway Time-out</body></html>")
            : Respond(HttpStatusCode.Conflict,
                $$"""{"title":"Job not waiting","status":409,"detail":"Job {{OperationId}} is queued: its command is in its queue or being run already."}"""));

        var run = await RunAsync($"run-now {OperationId}", api);

        Assert.True(run.ExitCode == ExitCodes.NotFoundOrConflict, run.Err);
        Assert.Equal(2, sent);
        Assert.Equal("", run.Out);
        Assert.Contains($"Job {OperationId} is queued", run.Err, StringComparison.Ordinal);
        Assert.Equal(mayHaveDoneIt, run.Err.Contains("An earlier try may have made it due now", StringComparison.Ordinal));
        Assert.Equal(mayHaveDoneIt, run.Err.Contains($"See: conveyor job {OperationId}", StringComparison.Ordinal));
    }

    /// <summary>The Api answers a cancel only with the job it cancelled: any other 200 is no Conveyor Api's, and says nothing was shown as cancelled.</summary>
    [Theory]
    [InlineData($$"""{"jobId":"{{OperationId}}","kind":"charge-payment","status":"queued"}""")]
    [InlineData($$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"cancelled"}""")]
    [InlineData("""{"jobId":"x","status":"cancelled"}""")]
    [InlineData("[]")]
    public async Task A_cancel_answered_with_anything_but_the_cancelled_job_is_an_unexpected_answer(string body)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, body));

        var run = await RunAsync($"cancel {OperationId}", api);

        Assert.Equal(ExitCodes.UnexpectedAnswer, run.ExitCode);
        Assert.Equal("", run.Out);
    }

    /// <summary>
    /// The Api holds a read of a job for 30 s at most: a longer <c>--wait</c> is a row of such reads, each asking for what
    /// is left, until the job ends.
    /// </summary>
    [Fact]
    public async Task A_wait_longer_than_the_apis_longest_read_is_made_of_reads_that_ask_for_what_is_left()
    {
        var asked = new ConcurrentQueue<int>();
        // Answered at once, as an Api that is stopping answers the reads it holds; the job ends on the third.
        using var api = JobReads(asked, reads => reads < 3 ? "running" : "succeeded");

        var run = await RunAsync($"job {OperationId} --wait 3600", api);

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        Assert.Equal([30, 30, 30], asked);
        Assert.Contains("succeeded", run.Out, StringComparison.Ordinal);
    }

    /// <summary>A wait that is over before the job ends asks for what is left each time, ends with a last look, and says the job goes on (7).</summary>
    [Fact]
    public async Task A_wait_that_ends_before_the_job_asks_for_what_is_left_and_exits_with_still_running()
    {
        var asked = new ConcurrentQueue<int>();
        using var api = JobReads(asked, _ => "queued");

        var run = await RunAsync($"job {OperationId} --wait 2", api);

        Assert.True(run.ExitCode == ExitCodes.StillRunning, run.Err);
        // Answered at once, each read is followed by a pause of a second: 2, then 1 s left, then a last look (0, or 1 when
        // a sliver of the wait was still left).
        Assert.Equal(2, asked.First());
        Assert.InRange(asked.Last(), 0, 1);
        Assert.InRange(asked.Count, 2, 4);
        Assert.True(asked.SequenceEqual(asked.OrderByDescending(seconds => seconds)), string.Join(", ", asked));
    }

    /// <summary>
    /// A read of one job answered with another job (a proxy or cache that mixes up paths, a wrong --api), as operation
    /// checks an operation's id: it was shown as the job asked for, and <c>job --wait</c> ended with that other job's
    /// outcome, 0 for a job that had not ended. It ends with 6, naming both, and nothing on stdout; so do a result, a cancel
    /// and a run-now answered with another job (they said only "expected job X", naming neither what came).
    /// </summary>
    [Theory]
    [InlineData($"job {OperationId}", $$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"succeeded"}""", FirstJob)]
    [InlineData($"job {OperationId} --json", $$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"succeeded"}""", FirstJob)]
    [InlineData($"job {OperationId} --wait 5", $$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"succeeded"}""", FirstJob)]
    [InlineData($"result {OperationId} --wait 5", $$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"succeeded"}""", FirstJob)]
    [InlineData($"job {OperationId}", """{"jobId":"x","kind":"charge-payment","status":"queued"}""", "x")]
    [InlineData($"job {OperationId} --json", """{"jobId":7,"kind":"charge-payment","status":"queued"}""", "7")]
    [InlineData($"result {OperationId}", $$"""{"charge":{ },"jobId":"{{FirstJob}}","kind":"charge-payment"}""", FirstJob)]
    [InlineData($"cancel {OperationId}", $$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"cancelled"}""", FirstJob)]
    [InlineData($"run-now {OperationId}", $$"""{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"scheduled"}""", FirstJob)]
    [InlineData($"run-now {OperationId} --json", """{"jobId":"x","kind":"charge-payment","status":"scheduled"}""", "x")]
    public async Task A_job_answered_with_another_job_than_the_one_asked_for_ends_with_6_naming_both(string command, string body, string answeredId)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, body));

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.UnexpectedAnswer, $"{run.ExitCode}: {run.Out}{run.Err}");
        Assert.Equal("", run.Out);
        Assert.Contains($"asked for job {OperationId}, it answered with job {answeredId}", run.Err, StringComparison.Ordinal);
    }

    /// <summary>Answers each read of the job at once with the status <paramref name="statusAfter"/> gives for the reads so far, noting the waitSeconds each asked for.</summary>
    private static Canned JobReads(ConcurrentQueue<int> asked, Func<int, string> statusAfter) => new(request =>
    {
        var query = System.Web.HttpUtility.ParseQueryString(request.RequestUri!.Query);
        asked.Enqueue(int.Parse(query["waitSeconds"]!, System.Globalization.CultureInfo.InvariantCulture));
        return Respond(HttpStatusCode.OK, $$"""{"jobId":"{{OperationId}}","kind":"charge-payment","status":"{{statusAfter(asked.Count)}}"}""");
    });

    /// <summary>The lines of <c>jobs --follow</c> show their times as every table does.</summary>
    [Fact]
    public async Task A_followed_jobs_lines_show_their_times_in_utc_at_one_width()
    {
        using var interrupt = new CancellationTokenSource();
        var reads = 0;
        using var api = new Canned(_ =>
        {
            if (Interlocked.Increment(ref reads) > 1)
            {
                // The second poll: the first page has been printed; Ctrl+C.
                interrupt.Cancel();
                return Respond(HttpStatusCode.OK, """{"items":[],"nextCursor":"c1"}""");
            }

            return Respond(HttpStatusCode.OK,
                """{"items":[{"jobId":"j1","status":"succeeded","createdAt":"2026-12-05T16:40:12.5+01:00"},{"jobId":"j2","status":"succeeded","createdAt":"2026-12-05T15:41:00.1234567Z"}],"nextCursor":"c1"}""");
        });

        var run = await RunAsync("jobs --follow --interval 1", api, new SharedText(), interrupt.Token);

        Assert.True(run.ExitCode == ExitCodes.Interrupted, run.Err);
        Assert.Contains("2026-12-05T15:40:12.5000000Z", run.Out, StringComparison.Ordinal);
        Assert.Contains("2026-12-05T15:41:00.1234567Z", run.Out, StringComparison.Ordinal);
    }

    /// <summary>Spectre turns <c>:name:</c> in markup into an emoji: text from the Api is shown as the Api wrote it.</summary>
    [Theory]
    [InlineData("queues", """[{"name":"q:warning:_error","kind":"error","sourceQueue":"q:warning:","messages":1,"consumers":0}]""")]
    [InlineData("messages q_error", """{"queueDepth":1,"messages":[{"messageId":"m:warning:","exceptionType":"A.B:warning:","exceptionMessage":"x :warning: y"}]}""")]
    [InlineData($"operation {OperationId}", $$"""{"operationId":"{{OperationId}}","state":"succeeded","kind":"move","queue":"q:warning:_error","detail":":warning:"}""")]
    public async Task Emoji_shortcodes_in_the_apis_text_are_shown_as_written_not_as_emoji(string command, string body)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, body));

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.True(run.Out.Contains(":warning:", StringComparison.Ordinal), run.Out);
        Assert.DoesNotContain("\u26A0", run.Out, StringComparison.Ordinal);
    }

    /// <summary>
    /// Spectre reads what follows a <c>--</c> as remaining arguments, which no command reads, and keeps only the last
    /// value of an option given twice: either would widen a purge or make a dry run real. Refused before any request.
    /// </summary>
    [Theory]
    [InlineData("purge q_error --confirm q_error -- --message-id abc", "'--' is not accepted")]
    [InlineData("move q_error -- --dry-run", "'--' is not accepted")]
    [InlineData("move q_error --dry-run --", "'--' is not accepted")]
    [InlineData("move q_error --exception-type A --exception-type B", "--exception-type is given 2 times")]
    [InlineData("purge q_error --group g1 --group=g2 --confirm q_error", "--group is given 2 times")]
    [InlineData("move q_error --target a --target b", "--target is given 2 times")]
    [InlineData("move q_error --faulted-before 2026-11-28T06:00:00Z --faulted-before 2026-11-29T06:00:00Z", "--faulted-before is given 2 times")]
    public async Task Arguments_after_a_double_dash_or_an_option_given_twice_are_a_usage_error_and_nothing_is_sent(string command, string said)
    {
        var requests = 0;
        using var api = new Canned(request =>
        {
            Interlocked.Increment(ref requests);
            return Respond(request.Method == HttpMethod.Post ? HttpStatusCode.Accepted : HttpStatusCode.OK,
                $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","moved":3}""");
        });

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains(said, run.Err, StringComparison.Ordinal);
        Assert.Equal(0, requests);
    }

    /// <summary>
    /// A move the Api accepted is not lost when reading its progress fails for a while: the CLI reads it again,
    /// and says at once which operation it started.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(502)]
    [InlineData(503)]
    [InlineData(504)]
    [InlineData(429)]
    public async Task A_failed_read_of_an_accepted_moves_progress_is_tried_again(int failure)
    {
        var reads = 0;
        using var api = new Canned(request =>
        {
            if (request.Method == HttpMethod.Post)
            {
                return Respond(HttpStatusCode.Accepted, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""");
            }

            if (Interlocked.Increment(ref reads) == 1)
            {
                if (failure == 0)
                {
                    throw new HttpRequestException("Connection reset by peer");
                }

                return RespondAfter(TimeSpan.FromSeconds(1), (HttpStatusCode)failure, """{"title":"Try later"}""");
            }

            return Respond(HttpStatusCode.OK, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","moved":3}""");
        });

        var run = await RunAsync("move q_error", api);

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        Assert.Contains("moved 3 message(s)", run.Out, StringComparison.Ordinal);
        Assert.Contains($"Started move {OperationId}.", run.Err, StringComparison.Ordinal);
        Assert.Equal(2, reads);
    }

    /// <summary>
    /// A gateway's 503 may ask for its wait as a date rather than seconds (HTTP allows both): the CLI waits as asked, not
    /// its own half second, counted from the answer's Date so that the clocks need not agree.
    /// </summary>
    [Fact]
    public async Task A_retry_after_given_as_a_date_is_the_wait_before_the_next_read()
    {
        var reads = 0;
        using var api = new Canned(request =>
        {
            if (request.Method == HttpMethod.Post)
            {
                return Respond(HttpStatusCode.Accepted, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""");
            }

            if (Interlocked.Increment(ref reads) == 1)
            {
                // The gateway's clock is a day off this machine's: only the difference of its two headers counts.
                var gatewayNow = DateTimeOffset.UtcNow.AddDays(1);
                var answer = Respond(HttpStatusCode.ServiceUnavailable, "<html><body>Maintenance</body></html>");
                answer.Headers.Date = gatewayNow;
                answer.Headers.RetryAfter = new System.Net.Http.Headers.RetryConditionHeaderValue(gatewayNow.AddSeconds(3));
                return answer;
            }

            return Respond(HttpStatusCode.OK, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","moved":3}""");
        });

        var run = await RunAsync("move q_error", api);

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        var said = System.Text.RegularExpressions.Regex.Match(run.Err, @"trying again in (?<seconds>[0-9.]+) s");
        Assert.True(said.Success, run.Err);
        Assert.Equal(3, double.Parse(said.Groups["seconds"].Value, System.Globalization.CultureInfo.InvariantCulture), tolerance: 1);
        Assert.Equal(2, reads);
    }

    /// <summary>
    /// A read refused with 429 (a rate limit of the Api or of a gateway in front of it) is no usage error: the CLI reads
    /// again after the wait the answer asks for, in seconds or as a date, whatever the refusal's body, as it does for a
    /// move's progress and submit does for a batch.
    /// </summary>
    [Theory]
    [InlineData("queues", "[]")]
    [InlineData("messages q_error", """{"queueDepth":0,"messages":[]}""")]
    [InlineData("groups q_error", """{"queueDepth":0,"examined":0,"groups":[]}""")]
    [InlineData("operations", "[]")]
    [InlineData($"operation {OperationId}", $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","moved":3}""")]
    [InlineData("audit", "[]")]
    [InlineData($"job {OperationId}", $$"""{"jobId":"{{OperationId}}","kind":"charge-payment","status":"queued"}""")]
    [InlineData("jobs", """{"items":[]}""")]
    public async Task A_read_refused_with_429_is_read_again_after_the_wait_the_answer_asks_for(string command, string body)
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            if (Interlocked.Increment(ref reads) == 1)
            {
                return RespondAfter(TimeSpan.FromSeconds(1), HttpStatusCode.TooManyRequests, """{"title":"Too many requests","detail":"Try again in 1 s."}""");
            }

            return Respond(HttpStatusCode.OK, body);
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        Assert.Contains("429", run.Err, StringComparison.Ordinal);
        Assert.Contains("trying again in 1 s", run.Err, StringComparison.Ordinal);
        Assert.Equal(2, reads);
    }

    /// <summary>A gateway's 429 is its own page, not a problem document, and may ask for its wait as a date: read again all the same.</summary>
    [Theory]
    [InlineData("text/html", "<html><body>429 Too Many Requests</body></html>")]
    [InlineData("text/plain", "rate limited")]
    public async Task A_gateways_429_on_a_read_is_read_again_after_the_date_it_asks_for(string mediaType, string page)
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            if (Interlocked.Increment(ref reads) == 1)
            {
                // The gateway's clock is a day off this machine's: only the difference of its two headers counts.
                var gatewayNow = DateTimeOffset.UtcNow.AddDays(1);
                var refused = Respond(HttpStatusCode.TooManyRequests, page, mediaType);
                refused.Headers.Date = gatewayNow;
                refused.Headers.RetryAfter = new System.Net.Http.Headers.RetryConditionHeaderValue(gatewayNow.AddSeconds(2));
                return refused;
            }

            return Respond(HttpStatusCode.OK, "[]");
        });

        var run = await RunAsync("queues", api);

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        var said = System.Text.RegularExpressions.Regex.Match(run.Err, @"trying again in (?<seconds>[0-9.]+) s");
        Assert.True(said.Success, run.Err);
        Assert.Equal(2, double.Parse(said.Groups["seconds"].Value, System.Globalization.CultureInfo.InvariantCulture), tolerance: 1);
        Assert.Equal(2, reads);
    }

    /// <summary>
    /// A 429 still there when the CLI stops trying (here at once: the wait asked for is longer than the CLI waits) says
    /// "try later", as 502/503/504 do (exit code 5), never "your command is wrong" (2); submit's 429 after its retries too.
    /// </summary>
    /// <summary>
    /// <c>conveyor submit "$KIND" jobs.jsonl</c> with KIND unset names no kind, as an empty queue argument names no queue: it
    /// was sent as <c>POST api/jobs//batch</c>, and whatever answered that path decided the exit code. A usage error; nothing is sent.
    /// </summary>
    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    public async Task Submit_given_an_empty_kind_is_a_usage_error_and_nothing_is_sent(string kind)
    {
        using var file = await ChargeFile.WriteAsync(1);
        using var api = new Counted(HttpStatusCode.Accepted, """{"jobs":[]}""");

        var run = await RunAsync(["submit", kind, file.Path], api);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains("The kind is empty", run.Err, StringComparison.Ordinal);
        Assert.Equal(0, api.Requests);
    }

    [Theory]
    [InlineData("queues")]
    [InlineData("jobs")]
    [InlineData($"job {OperationId} --wait 5")]
    [InlineData("submit charge-payment {file} --retries 0")]
    public async Task A_429_still_there_when_the_cli_stops_trying_ends_with_the_try_later_exit_code_not_usage(string command)
    {
        using var file = await ChargeFile.WriteAsync(1);
        var requests = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref requests);
            return RespondAfter(TimeSpan.FromHours(1), HttpStatusCode.TooManyRequests, """{"title":"Too many requests"}""");
        });

        var run = await RunAsync(command.Replace("{file}", file.Path, StringComparison.Ordinal), api);

        Assert.Equal(ExitCodes.Unreachable, run.ExitCode);
        Assert.Contains("429 Too many requests", run.Err, StringComparison.Ordinal);
        Assert.Contains("try again later", run.Err, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(1, requests);
    }

    /// <summary>
    /// A plain read answered 502, 503 or 504 (a gateway that cannot reach the Api, or the Api that cannot reach its broker or
    /// database) may pass as a 429 does: the GET changes nothing, so it is sent again, as the progress poll does, and the
    /// command shows what the Api answered once it could.
    /// </summary>
    [Theory]
    [InlineData("queues", "[]", 503, 1)]
    [InlineData("messages q_error", """{"queueDepth":0,"messages":[]}""", 503, 2)]
    [InlineData("groups q_error", """{"queueDepth":0,"examined":0,"groups":[]}""", 502, 1)]
    [InlineData("operations", "[]", 504, 1)]
    [InlineData($"operation {OperationId}", $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","moved":3}""", 503, 1)]
    [InlineData("audit", "[]", 502, 2)]
    [InlineData($"job {OperationId}", $$"""{"jobId":"{{OperationId}}","kind":"charge-payment","status":"queued"}""", 503, 2)]
    [InlineData("jobs", """{"items":[{"jobId":"j-after-503","status":"queued"}]}""", 503, 1)]
    public async Task A_plain_read_answered_502_503_or_504_is_read_again_and_shows_the_answer_that_follows(
        string command, string body, int status, int failures)
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            if (Interlocked.Increment(ref reads) > failures)
            {
                return Respond(HttpStatusCode.OK, body);
            }

            // The Api's own 503 (broker or database down) with its Retry-After; a gateway's page without one.
            if (status == 503)
            {
                return RespondAfter(TimeSpan.FromSeconds(1), HttpStatusCode.ServiceUnavailable, """{"title":"The database cannot be reached right now"}""");
            }

            return Respond((HttpStatusCode)status, $"<html><body>{status} from the gateway</body></html>");
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        Assert.Contains(status.ToString(System.Globalization.CultureInfo.InvariantCulture), run.Err, StringComparison.Ordinal);
        Assert.Contains("trying again in", run.Err, StringComparison.Ordinal);
        Assert.Equal(failures + 1, reads);
        if (command == "jobs")
        {
            Assert.Contains("j-after-503", run.Out, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// A 503 that lasts past the budget ends with "try later" (5), after the read was tried again with growing pauses,
    /// and says so; here with a budget of one second, as the CLI's own (two minutes) is set from <see cref="CliContext.PollFailureBudget"/>.
    /// </summary>
    [Fact]
    public async Task A_plain_read_answered_503_past_the_budget_ends_with_the_try_later_exit_code_saying_so()
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref reads);
            return Respond(HttpStatusCode.ServiceUnavailable, "<html><body>Service Unavailable</body></html>");
        });
        var retrying = new ConcurrentQueue<string>();
        using var client = new ConveyorClient(new Uri("http://conveyor.invalid/"), "key", api)
        {
            ReadRetryBudget = TimeSpan.FromSeconds(1),
            ReadRetryPause = TimeSpan.FromMilliseconds(100),
            Retrying = retrying.Enqueue,
        };

        var failure = await Assert.ThrowsAsync<CliFailureException>(() => client.GetAsync("api/error-queues", CancellationToken.None));

        Assert.Equal(ExitCodes.Unreachable, failure.ExitCode);
        Assert.StartsWith("503", failure.Message, StringComparison.Ordinal);
        Assert.Contains("try again later", failure.Message, StringComparison.Ordinal);
        Assert.True(reads > 1, $"read {reads} time(s)");
        Assert.Equal(reads - 1, retrying.Count);
    }

    /// <summary>A 503 that asks for a longer wait than the CLI waits in all ends at once, with 5 and the wait it asked for.</summary>
    [Fact]
    public async Task A_plain_read_answered_503_asking_for_a_longer_wait_than_the_budget_ends_at_once_saying_so()
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref reads);
            return RespondAfter(TimeSpan.FromHours(1), HttpStatusCode.ServiceUnavailable, """{"title":"Service Unavailable"}""");
        });

        var run = await RunAsync("queues", api);

        Assert.Equal(ExitCodes.Unreachable, run.ExitCode);
        Assert.Contains("503 Service Unavailable", run.Err, StringComparison.Ordinal);
        Assert.Contains("3600 s", run.Err, StringComparison.Ordinal);
        Assert.Contains("try again later", run.Err, StringComparison.Ordinal);
        Assert.Equal(1, reads);
    }

    /// <summary>
    /// Submit waits the whole Retry-After the Api (or a gateway) asks for: coming back sooner is refused again, and spends
    /// one of the key's permits and one of <c>--retries</c> for nothing. Stopped (as Ctrl+C does) once the wait is said.
    /// </summary>
    [Fact]
    public async Task Submit_waits_the_whole_retry_after_asked_for_not_a_shorter_one()
    {
        using var file = await ChargeFile.WriteAsync(1);
        var requests = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref requests);
            return RespondAfter(TimeSpan.FromSeconds(90), HttpStatusCode.TooManyRequests, """{"title":"Too many requests"}""");
        });
        using var interrupt = new CancellationTokenSource();
        var stderr = new SharedText();

        var submit = RunAsync($"submit charge-payment {file}", api, stderr, interrupt.Token);
        try
        {
            await Eventually.AssertAsync(() =>
            {
                Assert.Contains("sending them again in", stderr.ToString(), StringComparison.Ordinal);
                return Task.CompletedTask;
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            await interrupt.CancelAsync();
            await submit;
        }

        Assert.Contains("sending them again in 90 s", stderr.ToString(), StringComparison.Ordinal);
        Assert.Equal(1, requests);
    }

    /// <summary>
    /// A Retry-After longer than submit waits for a batch (the read budget, two minutes) ends at once with 5 (try later),
    /// saying when to send again, rather than after a shorter wait whose resend is only refused again.
    /// </summary>
    [Fact]
    public async Task Submit_told_to_wait_longer_than_it_waits_ends_at_once_saying_when_to_send_again()
    {
        using var file = await ChargeFile.WriteAsync(1);
        var requests = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref requests);
            return RespondAfter(TimeSpan.FromHours(1), HttpStatusCode.ServiceUnavailable, """{"title":"The job could not be queued"}""");
        });
        using var stop = new CancellationTokenSource();

        var submit = RunAsync($"submit charge-payment {file}", api, new SharedText(), stop.Token);
        try
        {
            await Eventually.AssertAsync(() =>
            {
                Assert.True(submit.IsCompleted, "submit is still waiting to send the batch again");
                return Task.CompletedTask;
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            await stop.CancelAsync();
            await submit;
        }

        var run = await submit;
        Assert.Equal(ExitCodes.Unreachable, run.ExitCode);
        Assert.Contains("503 The job could not be queued", run.Err, StringComparison.Ordinal);
        Assert.Contains("The Api asks to wait 3600 s (until ", run.Err, StringComparison.Ordinal);
        Assert.Contains("No job was accepted before this batch.", run.Err, StringComparison.Ordinal);
        Assert.Equal(1, requests);
    }

    /// <summary>
    /// A gateway's 502 or 504 to a batch says nothing of whether the Api took it: submit sends it again, as after a 503,
    /// which is safe since each job carries its business id (a job accepted before is answered again, not submitted twice).
    /// Here the gateway fails the second batch once; every job ends accepted, each batch counted once.
    /// </summary>
    [Theory]
    [InlineData(HttpStatusCode.BadGateway)]
    [InlineData(HttpStatusCode.GatewayTimeout)]
    public async Task Submit_sends_a_batch_again_after_a_gateways_502_or_504_and_reports_every_job_accepted(HttpStatusCode status)
    {
        using var file = await ChargeFile.WriteAsync(2);
        var posts = 0;
        using var api = new Canned(_ => Interlocked.Increment(ref posts) == 2
            ? Respond(status, "<html><body>Gateway failure</body></html>")
            : Respond(HttpStatusCode.Accepted, $$"""{"jobs":[{"index":0,"jobId":"{{Guid.NewGuid()}}","kind":"charge-payment","status":"queued"}]}"""));

        var run = await RunAsync($"submit charge-payment {file} --batch-size 1 --retries 1", api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Contains($"The Api answered {(int)status} for line 2 to line 2; sending them again in 1 s (1 of 1).", run.Err, StringComparison.Ordinal);
        Assert.Contains("2 charge-payment jobs accepted in 2 requests.", run.Out, StringComparison.Ordinal);
        Assert.Equal(3, posts);
    }

    /// <summary>A 502 or 504 still there after <c>--retries</c> ends with 5 (try later), saying which jobs were accepted.</summary>
    [Theory]
    [InlineData(HttpStatusCode.BadGateway)]
    [InlineData(HttpStatusCode.GatewayTimeout)]
    public async Task Submit_answered_502_or_504_past_its_retries_ends_with_try_later_saying_what_was_accepted(HttpStatusCode status)
    {
        using var file = await ChargeFile.WriteAsync(2);
        var posts = 0;
        using var api = new Canned(_ => Interlocked.Increment(ref posts) == 1
            ? Respond(HttpStatusCode.Accepted, $$"""{"jobs":[{"index":0,"jobId":"{{Guid.NewGuid()}}","kind":"charge-payment","status":"queued"}]}""")
            : Respond(status, "<html><body>Gateway failure</body></html>"));

        var run = await RunAsync($"submit charge-payment {file} --batch-size 1 --retries 1", api);

        Assert.Equal(ExitCodes.Unreachable, run.ExitCode);
        Assert.Contains("Still refused after 1 retry: try again later.", run.Err, StringComparison.Ordinal);
        Assert.Contains("The 1 jobs before it were accepted.", run.Err, StringComparison.Ordinal);
        Assert.Equal(3, posts);
    }

    /// <summary>
    /// The Api's 409 "Submission in progress" for a batch's job (SubmitStatus.InFlight: an earlier request, such as the
    /// one a 504 cut off, still holds its key) asks only for a retry, with Retry-After: 1. submit sends the batch again
    /// under the --retries rules, as after a 503; the job accepted in the first answer is answered again, not lost.
    /// One refused job or both: the answer's title differs (its own, or the batch's), the retry does not.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task Submit_sends_a_batch_again_after_a_submission_in_progress_409_and_reports_every_job_accepted(int refused)
    {
        using var file = await ChargeFile.WriteAsync(2);
        var posts = 0;
        using var api = new Canned(_ => Interlocked.Increment(ref posts) == 1
            ? InProgress(refused)
            : Respond(HttpStatusCode.Accepted, $$"""{"jobs":[{{AcceptedJob(0)}},{{AcceptedJob(1)}}]}"""));

        var run = await RunAsync($"submit charge-payment {file} --retries 1", api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Contains("The Api answered 409 for line 1 to line 2; sending them again in 1 s (1 of 1).", run.Err, StringComparison.Ordinal);
        Assert.Contains("2 charge-payment jobs accepted in 1 request.", run.Out, StringComparison.Ordinal);
        Assert.Equal(2, posts);
    }

    /// <summary>An in-progress 409 still there after <c>--retries</c> ends as a lasting 503 does: 5 (try later), saying what was accepted.</summary>
    [Fact]
    public async Task Submit_answered_submission_in_progress_past_its_retries_ends_with_try_later()
    {
        using var file = await ChargeFile.WriteAsync(2);
        var posts = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref posts);
            return InProgress(1);
        });

        var run = await RunAsync($"submit charge-payment {file} --retries 1", api);

        Assert.Equal(ExitCodes.Unreachable, run.ExitCode);
        Assert.Contains("Still refused after 1 retry: try again later.", run.Err, StringComparison.Ordinal);
        Assert.Contains("line 2: 409 Submission in progress", run.Err, StringComparison.Ordinal);
        Assert.Contains("Accepted from this batch (1 of 2): line 1 (job ", run.Err, StringComparison.Ordinal);
        Assert.Equal(2, posts);
    }

    /// <summary>
    /// Only the in-progress refusal is sent again: any other 409 (not one the batch endpoint gives today, but a conflict
    /// all the same) ends at once with 4, as does a 409 whose refused jobs are not all in progress.
    /// </summary>
    [Theory]
    [InlineData("""{"title":"Conflict","status":409,"detail":"Something else conflicts."}""")]
    [InlineData("""{"title":"Some jobs of the batch were not accepted","status":409,"jobs":[{"index":0,"error":{"status":409,"title":"Submission in progress","detail":"Retry shortly."}},{"index":1,"error":{"status":409,"title":"Job busy","detail":"Another conflict."}}]}""")]
    public async Task Submit_answered_another_409_ends_at_once_with_not_found_or_conflict(string problem)
    {
        using var file = await ChargeFile.WriteAsync(2);
        var posts = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref posts);
            return RespondAfter(TimeSpan.FromSeconds(1), HttpStatusCode.Conflict, problem);
        });

        var run = await RunAsync($"submit charge-payment {file} --retries 1", api);

        Assert.Equal(ExitCodes.NotFoundOrConflict, run.ExitCode);
        Assert.DoesNotContain("sending them again", run.Err, StringComparison.Ordinal);
        Assert.Equal(1, posts);
    }

    /// <summary>A gateway's Retry-After date thousands of years past its own Date: said, not a crash.</summary>
    [Fact]
    public async Task Submit_told_to_wait_past_any_date_ends_at_once_without_a_crash()
    {
        using var file = await ChargeFile.WriteAsync(1);
        using var api = new Canned(_ =>
        {
            var refused = Respond(HttpStatusCode.ServiceUnavailable, "<html><body>Maintenance</body></html>");
            refused.Headers.Date = new DateTimeOffset(1970, 1, 1, 0, 0, 0, TimeSpan.Zero);
            refused.Headers.RetryAfter = new System.Net.Http.Headers.RetryConditionHeaderValue(new DateTimeOffset(9999, 1, 1, 0, 0, 0, TimeSpan.Zero));
            return refused;
        });

        var run = await RunAsync($"submit charge-payment {file}", api);

        Assert.Equal(ExitCodes.Unreachable, run.ExitCode);
        Assert.Contains("(past any date)", run.Err, StringComparison.Ordinal);
    }

    /// <summary>The Api's 429 for an unknown key from a locked-out address is about the key: not read again, exit code 3.</summary>
    [Fact]
    public async Task A_key_lockout_429_on_a_read_is_an_auth_failure_that_is_not_read_again()
    {
        var requests = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref requests);
            return RespondAfter(TimeSpan.FromSeconds(1), HttpStatusCode.TooManyRequests, $$"""{"type":"{{ConveyorClient.KeyLockoutProblemType}}","title":"Too many unknown API keys"}""");
        });

        var run = await RunAsync("queues", api);

        Assert.Equal(ExitCodes.Auth, run.ExitCode);
        Assert.DoesNotContain("trying again", run.Err, StringComparison.Ordinal);
        Assert.Equal(1, requests);
    }

    [Fact]
    public async Task An_accepted_move_whose_progress_cannot_be_read_ends_with_its_own_exit_code_naming_the_operation()
    {
        var posts = 0;
        using var api = new Canned(request =>
        {
            if (request.Method == HttpMethod.Post)
            {
                Interlocked.Increment(ref posts);
                return Respond(HttpStatusCode.Accepted, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""");
            }

            throw new HttpRequestException("Connection refused");
        });

        var run = await RunAsync("move q_error --timeout 2", api);

        Assert.Equal(ExitCodes.ProgressUnknown, run.ExitCode);
        Assert.Contains($"Follow it with: conveyor operation {OperationId} --wait", run.Err, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(1, posts);
    }

    /// <summary>
    /// A 500 of the Api to a read of a started operation's progress says nothing of the operation, which goes on: it
    /// ended with 1, which says the operation failed, so a script would take a running move for a failed one (and start
    /// it again). It ends with 9 and names the operation to follow, as when the Api cannot be reached.
    /// </summary>
    [Theory]
    [InlineData("move q_error")]
    [InlineData("purge q_error --confirm q_error --json")]
    [InlineData($"operation {OperationId} --wait")]
    public async Task A_500_to_a_read_of_a_started_operations_progress_ends_as_progress_unknown_naming_it(string command)
    {
        var posts = 0;
        using var api = new Canned(request =>
        {
            if (request.Method == HttpMethod.Post)
            {
                Interlocked.Increment(ref posts);
                return Respond(HttpStatusCode.Accepted, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""");
            }

            return Respond(HttpStatusCode.InternalServerError, """{"title":"An error occurred while processing your request.","status":500}""");
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.ProgressUnknown, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("500 An error occurred", run.Err, StringComparison.Ordinal);
        Assert.Contains($"follow it with: conveyor operation {OperationId} --wait", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
        Assert.True(posts <= 1);
    }

    /// <summary>
    /// Whatever a read of a started operation's progress is answered with, the command ends naming the operation and how
    /// to follow it: an HTML 500 ended with 6 and asked whether --api was a Conveyor Api (the address that had just
    /// accepted the move), a 404 with 4 (no such operation) and a 401/403 with 3, none of them naming the operation, so a
    /// script or an operator took a running move for one never started. An answer that says nothing of the operation
    /// ends with 9 (progress unknown); a refused key keeps 3, which tells the script what to mend, and names it too.
    /// </summary>
    [Theory]
    [InlineData("move q_error", 500, "<html><body>Internal Server Error</body></html>", ExitCodes.ProgressUnknown)]
    [InlineData("purge q_error --confirm q_error --json", 200, "<html><body>Welcome</body></html>", ExitCodes.ProgressUnknown)]
    [InlineData("move q_error", 404, """{"title":"Not Found","status":404}""", ExitCodes.ProgressUnknown)]
    [InlineData("move q_error --json", 401, """{"title":"Unauthorized","status":401}""", ExitCodes.Auth)]
    [InlineData("purge q_error --confirm q_error", 403, """{"title":"Forbidden","status":403}""", ExitCodes.Auth)]
    [InlineData($"operation {OperationId} --wait --timeout 1", 502, "<html><body>Bad Gateway</body></html>", ExitCodes.ProgressUnknown, 1)]
    [InlineData($"operation {OperationId} --wait", 404, """{"title":"Not Found","status":404}""", ExitCodes.ProgressUnknown, 1)]
    [InlineData($"operation {OperationId} --wait", 403, """{"title":"Forbidden","status":403}""", ExitCodes.Auth, 1)]
    public async Task Any_failure_to_read_a_started_operations_progress_names_it_and_how_to_follow_it(
        string command, int status, string body, int exitCode, int readsAnswered = 0)
    {
        var reads = 0;
        using var api = new Canned(request =>
        {
            var running = $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""";
            if (request.Method == HttpMethod.Post)
            {
                return Respond(HttpStatusCode.Accepted, running);
            }

            // operation --wait: its first read shows it running, so that the failure comes to an operation it knows.
            return Interlocked.Increment(ref reads) <= readsAnswered
                ? Respond(HttpStatusCode.OK, running)
                : Respond((HttpStatusCode)status, body);
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == exitCode, $"{run.ExitCode}: {run.Err}");
        Assert.Contains($"Operation {OperationId} was started", run.Err, StringComparison.Ordinal);
        Assert.Contains($"follow it with: conveyor operation {OperationId} --wait", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("Is --api", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    /// <summary>
    /// A start or progress answer of a started (or shown) operation whose count is not a whole number (<c>"moved": 1.5</c>,
    /// <c>"purged": "x"</c>) is no operation the Api shows: it ended with 6 from deep in the progress bar or the summary
    /// (or, for a text, was read as 0 and printed as done), without naming the operation that goes on. It ends with 9 and
    /// says how to follow it, as any other answer about a started operation that says nothing of it. So does an answer to
    /// <c>operation &lt;id&gt;</c> that shows the operation (its id and a state) with such a count, whether it is the only
    /// read (no <c>--wait</c>) or the first of a wait: both ended with 6, asking whether the address is an Api's, while the
    /// same answer to a later read of the wait ended with 9.
    /// </summary>
    [Theory]
    [InlineData("move q_error --timeout 2", "running", "\"examined\":1.5")]
    [InlineData("move q_error", "succeeded", "\"moved\":1.5")]
    [InlineData("purge q_error --confirm q_error", "succeeded", "\"purged\":\"x\"")]
    [InlineData($"operation {OperationId} --wait", "failed", "\"queueDepthAtStart\":12.5", 1)]
    [InlineData("move q_error --no-wait --json", "running", "\"examined\":\"x\"", 0, true)]
    [InlineData($"operation {OperationId}", "succeeded", "\"moved\":1.5")]
    [InlineData($"operation {OperationId} --json", "running", "\"examined\":\"x\"")]
    [InlineData($"operation {OperationId} --wait", "running", "\"examined\":1.5")]
    public async Task A_count_that_is_not_a_whole_number_names_the_started_operation_and_how_to_follow_it(
        string command, string state, string count, int readsAnswered = 0, bool inStartAnswer = false)
    {
        var reads = 0;
        using var api = new Canned(request =>
        {
            var running = $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""";
            var broken = $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"{{state}}",{{count}}}""";
            if (request.Method == HttpMethod.Post)
            {
                return Respond(HttpStatusCode.Accepted, inStartAnswer ? broken : running);
            }

            return Respond(HttpStatusCode.OK, Interlocked.Increment(ref reads) <= readsAnswered ? running : broken);
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.ProgressUnknown, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("whole number", run.Err, StringComparison.Ordinal);
        Assert.Contains($"Operation {OperationId} was started", run.Err, StringComparison.Ordinal);
        Assert.Contains($"follow it with: conveyor operation {OperationId} --wait", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    /// <summary>
    /// A page of jobs (or an error queue's messages or groups) whose list is not a JSON array of objects: an object, a
    /// string, numbers, or no list at all. <c>--json</c> printed such a page as the Api's and exited 0, and the table ended
    /// with the JSON reader's words ("The requested operation requires an element of type 'Array'") after printing part of
    /// its output. Each ends with 6 naming the list, and prints nothing on stdout.
    /// </summary>
    [Theory]
    [InlineData("jobs --json", """{"items":{"jobId":"j","status":"queued"},"nextCursor":null}""")]
    [InlineData("jobs", """{"items":{"jobId":"j","status":"queued"},"nextCursor":null}""")]
    [InlineData("jobs --json", """{"items":"none"}""")]
    [InlineData("jobs", """{"items":"none"}""")]
    [InlineData("jobs --json", """{"items":[1,2]}""")]
    [InlineData("jobs", """{"items":[1,2]}""")]
    [InlineData("jobs --json", """{"nextCursor":"abc"}""")]
    [InlineData("jobs --follow --json", """{"items":{"jobId":"j","status":"queued"},"nextCursor":"abc"}""")]
    [InlineData("jobs --follow", """{"items":"none","nextCursor":"abc"}""")]
    [InlineData("messages q_error --json", """{"queueDepth":1,"messages":{"messageId":"m"}}""")]
    [InlineData("messages q_error", """{"queueDepth":1,"messages":"none"}""")]
    [InlineData("groups q_error --json", """{"queueDepth":1,"examined":1,"groups":"none"}""")]
    [InlineData("groups q_error", """{"queueDepth":1,"examined":1,"groups":{"groupId":"g"}}""")]
    public async Task A_page_whose_list_is_not_an_array_of_objects_ends_with_6_printing_nothing(string command, string body)
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref reads);
            return Respond(HttpStatusCode.OK, body);
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.UnexpectedAnswer, $"{run.ExitCode}: {run.Out}{run.Err}");
        var list = command.Split(' ')[0] == "jobs" ? "items" : command.Split(' ')[0];
        Assert.Contains($"whose {list} is a JSON array of objects", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
        Assert.Equal(1, reads);
    }

    /// <summary>
    /// A page whose cursor, the value the next page is asked for with, is not a string: a page of jobs whose nextCursor is
    /// a number, an object, an array or a boolean, or a full page of operations (or audit entries) whose last operationId,
    /// which <c>--before</c> pages on, is one. <c>jobs</c> read such a nextCursor as no cursor: the table was printed as a
    /// last page (no next page said) and <c>--json</c> printed the page as the Api's, both with exit 0; <c>operations</c> and
    /// <c>audit</c> said nothing of older entries. Each ends with 6 naming the cursor, printing nothing on stdout, as a
    /// page whose list is not one does (<c>jobs --follow</c> did already). So does a cursor that is a string the option it
    /// is printed as would refuse: a nextCursor that is not base64url (a space, a quote, a metacharacter) or is empty, a last
    /// operationId that is not an id. The hint said "Next page: conveyor jobs --after 'a&amp;b'" or "add --before 'a&amp;b'", and
    /// the command it gave ended with 2 at once (--after takes letters, digits, '-' and '_'; --before an id), and <c>--json</c>
    /// printed the page for a script to page on with; no Conveyor Api gives such a cursor.
    /// </summary>
    [Theory]
    [InlineData("jobs", "42", "nextCursor a string")]
    [InlineData("jobs", """{"at":"c1"}""", "nextCursor a string")]
    [InlineData("jobs", """["c1"]""", "nextCursor a string")]
    [InlineData("jobs", "true", "nextCursor a string")]
    [InlineData("jobs --json", "42", "nextCursor a string")]
    [InlineData("jobs --json", """{"at":"c1"}""", "nextCursor a string")]
    [InlineData("jobs --json", """["c1"]""", "nextCursor a string")]
    [InlineData("jobs --json", "false", "nextCursor a string")]
    [InlineData("jobs --order oldest", "42", "nextCursor a string")]
    [InlineData("jobs --follow", "42", "nextCursor a string")]
    [InlineData("jobs --follow --json", """{"at":"c1"}""", "nextCursor a string")]
    [InlineData("operations --limit 1", "42", "operationId an id")]
    [InlineData("operations --limit 1 --json", """{"id":"x"}""", "operationId an id")]
    [InlineData("audit --limit 1", "true", "operationId an id")]
    // Strings that the option the cursor is printed as would refuse.
    [InlineData("jobs", "\"a&b\"", "nextCursor a cursor")]
    [InlineData("jobs", "\"c d\"", "nextCursor a cursor")]
    [InlineData("jobs", "\"\"", "nextCursor a cursor")]
    [InlineData("jobs", "\"abc=\"", "nextCursor a cursor")]
    [InlineData("jobs --json", "\"a'b\"", "nextCursor a cursor")]
    [InlineData("jobs --order oldest", "\"a/b+c\"", "nextCursor a cursor")]
    [InlineData("jobs --follow", "\"a&b\"", "nextCursor a cursor")]
    [InlineData("jobs --follow --json", "\"\"", "nextCursor a cursor")]
    [InlineData("operations --limit 1", "\"a&b\"", "operationId an id")]
    [InlineData("operations --limit 1", "\"-x\"", "operationId an id")]
    [InlineData("operations --limit 1", "\"\"", "operationId an id")]
    [InlineData("operations --limit 1 --json", "\"not-an-id\"", "operationId an id")]
    [InlineData("audit --limit 1", "\"12345\"", "operationId an id")]
    public async Task A_page_whose_cursor_is_not_one_the_cli_takes_ends_with_6_printing_nothing(string command, string cursor, string said)
    {
        var reads = 0;
        var body = command.StartsWith("jobs", StringComparison.Ordinal)
            ? $$"""{"items":[{"jobId":"{{FirstJob}}","kind":"charge-payment","status":"queued"}],"nextCursor":{{cursor}}}"""
            : $$"""[{"operationId":{{cursor}},"kind":"move","queue":"q_error","state":"succeeded"}]""";
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref reads);
            return Respond(HttpStatusCode.OK, body);
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.UnexpectedAnswer, $"{run.ExitCode}: {run.Out}{run.Err}");
        Assert.Contains(said, run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
        Assert.Equal(1, reads);
    }

    /// <summary>
    /// What the hints print goes back in: the last operationId of a full page is printed as the <c>--before</c> the next
    /// command takes, and the CLI pages on with it (the Api is asked with that id).
    /// </summary>
    [Theory]
    [InlineData("operations")]
    [InlineData("audit")]
    public async Task The_before_a_full_page_prints_is_one_the_cli_takes(string command)
    {
        var asked = new List<string>();
        using var api = new Canned(request =>
        {
            lock (asked)
            {
                asked.Add(request.RequestUri!.Query);
            }

            return Respond(HttpStatusCode.OK, $$"""[{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded"}]""");
        });

        var first = await RunAsync($"{command} --limit 1", api);
        var said = first.Err.Split("add ", 2);
        Assert.True(said.Length == 2, first.Err);
        var before = said[1].Split((char[])['\r', '\n'], 2)[0].Trim();
        Assert.Equal($"--before {OperationId}", before);

        var second = await RunAsync($"{command} --limit 1 {before}", api);

        Assert.True(second.ExitCode == ExitCodes.Ok, $"{second.ExitCode}: {second.Out}{second.Err}");
        Assert.Contains($"before={OperationId}", asked[^1], StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>
    /// <c>jobs --order oldest --follow</c> against an Api whose page names no next cursor (an Api that does not know
    /// <c>order=oldest</c> answers its newest-first last page so): polling on from no cursor would print the same jobs
    /// again at every poll. It ends with 6, as for any answer the Api does not give.
    /// </summary>
    [Fact]
    public async Task Follow_ends_with_6_when_a_page_has_no_next_cursor()
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            Interlocked.Increment(ref reads);
            return Respond(HttpStatusCode.OK, $$"""{"items":[{"jobId":"{{OperationId}}","status":"queued"}],"nextCursor":null}""");
        });

        var run = await RunAsync("jobs --order oldest --follow --interval 1", api);

        Assert.True(run.ExitCode == ExitCodes.UnexpectedAnswer, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("nextCursor", run.Err, StringComparison.Ordinal);
        Assert.Equal(1, reads);
    }

    /// <summary>
    /// <c>jobs --follow</c> runs for hours, as <c>tail -F</c> does: a read refused for longer than the two minutes a single read
    /// waits (here asking for 200 s at once) ended the follower with 5, and a script or an operator had to start it again by
    /// hand. It waits as asked, says so on one line, and goes on until the read passes or Ctrl+C, which says how to resume.
    /// </summary>
    [Fact]
    public async Task Follow_keeps_trying_a_read_refused_for_longer_than_two_minutes_until_ctrl_c()
    {
        var reads = 0;
        using var api = new Canned(_ => Interlocked.Increment(ref reads) == 1
            ? Respond(HttpStatusCode.OK, $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c1"}""")
            : RespondAfter(TimeSpan.FromSeconds(200), HttpStatusCode.ServiceUnavailable, """{"title":"The database cannot be reached right now"}"""));
        var stderr = new SharedText();
        using var interrupt = new CancellationTokenSource();

        var following = RunAsync("jobs --follow --interval 1", api, stderr, interrupt.Token);
        await Eventually.AssertAsync(() => Assert.Contains(
            "Could not read the jobs (503 The database cannot be reached right now); trying again in 200 s, "
            + "and on after each failure (as the Api asks, else after a growing pause) until they pass (Ctrl+C stops).", stderr.ToString(), StringComparison.Ordinal));
        Assert.False(following.IsCompleted, stderr.ToString());
        await interrupt.CancelAsync();
        var run = await following;

        Assert.True(run.ExitCode == ExitCodes.Interrupted, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("Resume with: conveyor jobs --follow --interval 1 --after c1", run.Err, StringComparison.Ordinal);
        Assert.Contains(FirstJob, run.Out, StringComparison.Ordinal);
        Assert.Equal(2, reads);
    }

    /// <summary>
    /// An outage while following (the Api restarting: no answer; then its 503 while its database comes back) is ridden out:
    /// one line when reads start failing and one each time they fail otherwise, not a line per try, and one when they pass;
    /// every job is printed once. A read left unanswered ended the follower with 5 at once.
    /// </summary>
    [Fact]
    public async Task Follow_rides_out_an_outage_saying_so_once_and_when_it_passes()
    {
        var reads = 0;
        using var api = new Canned(_ => Interlocked.Increment(ref reads) switch
        {
            1 => Respond(HttpStatusCode.OK, $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c1"}"""),
            2 or 3 => throw new HttpRequestException(
                HttpRequestError.ConnectionError, "Connection refused (conveyor.invalid:80)", new System.Net.Sockets.SocketException(111)),
            4 or 5 or 6 => RespondAfter(TimeSpan.FromSeconds(1), HttpStatusCode.ServiceUnavailable, """{"title":"The database cannot be reached right now"}"""),
            7 => Respond(HttpStatusCode.OK, $$"""{"items":[{"jobId":"{{SecondJob}}","status":"queued"}],"nextCursor":"c2"}"""),
            _ => Respond(HttpStatusCode.OK, """{"items":[],"nextCursor":"c2"}"""),
        });
        var stderr = new SharedText();
        using var interrupt = new CancellationTokenSource();

        var following = RunAsync("jobs --follow --interval 1", api, stderr, interrupt.Token);
        await Eventually.AssertAsync(() => Assert.True(Volatile.Read(ref reads) >= 8, stderr.ToString()));
        Assert.False(following.IsCompleted, stderr.ToString());
        await interrupt.CancelAsync();
        var run = await following;

        Assert.True(run.ExitCode == ExitCodes.Interrupted, $"{run.ExitCode}: {run.Err}");
        Assert.Equal(1, Occurrences(run.Out, FirstJob));
        Assert.Equal(1, Occurrences(run.Out, SecondJob));
        Assert.Equal(1, Occurrences(run.Err, "Could not read the jobs (Cannot reach the Api"));
        Assert.Equal(1, Occurrences(run.Err, "Could not read the jobs (503 The database cannot be reached right now)"));
        Assert.Equal(1, Occurrences(run.Err, "Read the jobs again after"));
        Assert.Contains("Resume with: conveyor jobs --follow --interval 1 --after c2", run.Err, StringComparison.Ordinal);
    }

    /// <summary><c>--retry-for</c> bounds how long <c>--follow</c> keeps trying: then 5, saying so and how to resume (it was an unknown option).</summary>
    [Fact]
    public async Task Follow_with_retry_for_gives_up_with_try_later_once_reads_were_refused_that_long()
    {
        var reads = 0;
        using var api = new Canned(_ => Interlocked.Increment(ref reads) == 1
            ? Respond(HttpStatusCode.OK, $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c1"}""")
            : RespondAfter(TimeSpan.FromSeconds(1), HttpStatusCode.TooManyRequests, """{"title":"Too many requests"}"""));

        var run = await RunAsync("jobs --follow --interval 1 --retry-for 2", api);

        Assert.True(run.ExitCode == ExitCodes.Unreachable, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("429 Too many requests", run.Err, StringComparison.Ordinal);
        Assert.Contains("(--retry-for 2;", run.Err, StringComparison.Ordinal);
        Assert.Contains("stopped following", run.Err, StringComparison.Ordinal);
        Assert.Contains("Resume with: conveyor jobs --follow --interval 1 --retry-for 2 --after c1", run.Err, StringComparison.Ordinal);
        Assert.True(reads > 2, $"read {reads} time(s)");
    }

    /// <summary>
    /// What waiting does not mend ends <c>--follow</c> at once, with its own exit code: a key refused (401, 403), the request
    /// refused (400), no such listing (404), a 500; and an Api that cannot be reached on the first read (a wrong address).
    /// </summary>
    [Theory]
    [InlineData(401, ExitCodes.Auth)]
    [InlineData(403, ExitCodes.Auth)]
    [InlineData(400, ExitCodes.Usage)]
    [InlineData(404, ExitCodes.NotFoundOrConflict)]
    [InlineData(500, ExitCodes.OperationFailed)]
    [InlineData(0, ExitCodes.Unreachable)]
    public async Task Follow_ends_at_once_on_a_failure_that_waiting_does_not_mend(int status, int exitCode)
    {
        var reads = 0;
        using var api = new Canned(_ =>
        {
            var read = Interlocked.Increment(ref reads);
            if (status == 0)
            {
                throw new HttpRequestException(HttpRequestError.ConnectionError, "Connection refused (conveyor.invalid:80)", new System.Net.Sockets.SocketException(111));
            }

            return read == 1
                ? Respond(HttpStatusCode.OK, $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c1"}""")
                : Respond((HttpStatusCode)status, """{"title":"Refused"}""");
        });

        var run = await RunAsync("jobs --follow --interval 1", api);

        Assert.True(run.ExitCode == exitCode, $"{run.ExitCode}: {run.Err}");
        Assert.Equal(status == 0 ? 1 : 2, reads);
        Assert.DoesNotContain("trying again", run.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// <c>operation &lt;id&gt; --wait</c> for an id the Api has never known (its first read answered 404) is no started
    /// operation whose progress was lost: it stays 4, and says which id was not found.
    /// </summary>
    [Fact]
    public async Task Operation_wait_for_an_unknown_id_stays_not_found_and_names_it()
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.NotFound, """{"title":"Not Found","status":404}"""));

        var run = await RunAsync($"operation {OperationId} --wait", api);

        Assert.True(run.ExitCode == ExitCodes.NotFoundOrConflict, $"{run.ExitCode}: {run.Err}");
        Assert.Contains($"No operation {OperationId}", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    /// <summary>
    /// An answer to a read of operation A that shows operation B comes from something else at the Api's address (a proxy or
    /// cache that mixes up paths, a wrong base URL): the Api answers a read of an operation with that operation. It was shown
    /// as A's outcome (exit 0 for B's success, B's counts and state printed under A's name). It ends as an answer the Api does
    /// not give, 6, naming both ids and printing nothing on stdout; for a move already started (known to exist), 9 with how to
    /// follow it, as for any other answer that says nothing of it.
    /// </summary>
    [Theory]
    [InlineData($"operation {OperationId}", "\"0192f1c4-0000-7000-8000-000000000001\"", ExitCodes.UnexpectedAnswer)]
    [InlineData($"operation {OperationId} --json", "\"0192f1c4-0000-7000-8000-000000000001\"", ExitCodes.UnexpectedAnswer)]
    [InlineData($"operation {OperationId} --wait", "\"0192f1c4-0000-7000-8000-000000000001\"", ExitCodes.UnexpectedAnswer)]
    [InlineData($"operation {OperationId}", "\"x`y` z\"", ExitCodes.UnexpectedAnswer)]
    [InlineData($"operation {OperationId}", "5", ExitCodes.UnexpectedAnswer)]
    [InlineData("move q_error", "\"0192f1c4-0000-7000-8000-000000000001\"", ExitCodes.ProgressUnknown)]
    public async Task An_answer_showing_another_operation_than_the_one_asked_for_is_not_taken_for_it(string command, string answeredId, int exitCode)
    {
        using var api = new Canned(request => request.Method == HttpMethod.Post
            ? Respond(HttpStatusCode.Accepted, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""")
            : Respond(HttpStatusCode.OK, $$"""{"operationId":{{answeredId}},"kind":"move","queue":"q_error","state":"succeeded","moved":3}"""));

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == exitCode, $"{run.ExitCode}: {run.Err}");
        var shownId = JsonDocument.Parse(answeredId).RootElement is { ValueKind: JsonValueKind.String } text ? text.GetString()! : answeredId;
        Assert.Contains($"asked for operation {OperationId}, it answered with operation {shownId}", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
        if (exitCode == ExitCodes.ProgressUnknown)
        {
            Assert.Contains($"follow it with: conveyor operation {OperationId} --wait", run.Err, StringComparison.Ordinal);
        }
    }

    /// <summary>
    /// The request to start a move or purge went out and the connection then broke, or no answer came in time: the Api may
    /// have taken it and started the operation, which goes on. It ended with 5 ("Cannot reach the Api ...") as a refused
    /// connection does, which tells a script that nothing was started and to try again later. It ends with 10 (the start
    /// is unknown), says it may have started and how to look, and prints nothing on stdout.
    /// </summary>
    [Theory]
    [InlineData("move q_error", false)]
    [InlineData("purge q_error --confirm q_error --json", false)]
    [InlineData("move q_error --no-wait", true)]
    [InlineData("purge q_error --confirm q_error", true)]
    public async Task A_request_to_start_an_operation_cut_off_after_it_was_sent_says_it_may_have_started(string command, bool timedOut)
    {
        var posts = 0;
        using var api = new Holding(async (request, cancellationToken) =>
        {
            Interlocked.Increment(ref posts);
            // The Api reads the whole request; then the connection drops, or the answer does not come in time.
            await request.Content!.ReadAsStringAsync(cancellationToken);
            throw timedOut
                ? new TaskCanceledException("The request was canceled due to the configured HttpClient.Timeout.", new TimeoutException())
                : new HttpRequestException(HttpRequestError.ResponseEnded, "An error occurred while sending the request.",
                    new HttpIOException(HttpRequestError.ResponseEnded, "The response ended prematurely."));
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.StartUnknown, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("may have started it", run.Err, StringComparison.Ordinal);
        Assert.Contains("conveyor operations --queue q_error --state running", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
        Assert.Equal(1, posts);
    }

    /// <summary>
    /// A gateway in front of the Api answers the request to start a move or purge with 504 (it forwarded the request and
    /// stopped waiting for the Api's answer) or 502 (the Api's answer broke off, or it could not reach the Api: it cannot
    /// tell which). Either way the Api may have started the operation: "try later" (5) read as nothing started, and a
    /// script started the move again. A 503 (the gateway or the Api refusing it) and a 429 stay 5: nothing was started.
    /// </summary>
    [Theory]
    [InlineData("move q_error", 504, "text/plain", "Gateway Timeout", ExitCodes.StartUnknown)]
    [InlineData("purge q_error --confirm q_error --json", 502, "text/html", "<html><body>Bad Gateway</body></html>", ExitCodes.StartUnknown)]
    [InlineData("move q_error --no-wait", 504, "text/html", "<html><body>Gateway Time-out</body></html>", ExitCodes.StartUnknown)]
    [InlineData("move q_error", 503, "text/html", "<html><body>Service Unavailable</body></html>", ExitCodes.Unreachable)]
    [InlineData("move q_error", 503, "application/problem+json", """{"title":"Message broker unavailable","status":503}""", ExitCodes.Unreachable)]
    [InlineData("move q_error", 429, "application/problem+json", """{"title":"Too many requests","status":429}""", ExitCodes.Unreachable)]
    public async Task A_gateways_502_or_504_to_the_start_of_an_operation_says_it_may_have_started(
        string command, int status, string mediaType, string body, int exitCode)
    {
        var posts = 0;
        using var api = new Canned(request =>
        {
            Assert.Equal(HttpMethod.Post, request.Method);
            Interlocked.Increment(ref posts);
            return Respond((HttpStatusCode)status, body, mediaType);
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == exitCode, $"{run.ExitCode}: {run.Err}");
        Assert.Equal(exitCode == ExitCodes.StartUnknown, run.Err.Contains("may have started it", StringComparison.Ordinal));
        if (exitCode == ExitCodes.StartUnknown)
        {
            Assert.Contains("conveyor operations --queue q_error --state running", run.Err, StringComparison.Ordinal);
        }

        Assert.Equal("", run.Out);
        Assert.Equal(1, posts);
    }

    /// <summary>
    /// The request to start a move or purge was answered as accepted, but the answer names no operation: no operationId, a
    /// null one, one that is not an id, or no JSON object at all (a proxy's page). It ended with 6 ("the answer is not one a
    /// Conveyor Api gives"), which says nothing of the operation: the Api may have started it, and a script that took 6 for
    /// "nothing happened" started it again. It ends with 10, as for a start whose answer never came, saying it may have
    /// started and how to look; nothing is read after it and nothing is printed on stdout.
    /// </summary>
    [Theory]
    [InlineData("move q_error", """{"kind":"move","queue":"q_error","state":"running"}""")]
    [InlineData("purge q_error --confirm q_error --json", """{"operationId":null,"kind":"purge","queue":"q_error","state":"running"}""")]
    [InlineData("move q_error --no-wait", """{"operationId":"not-an-id","kind":"move","queue":"q_error","state":"running"}""")]
    [InlineData("move q_error --no-wait --json", """{"operationId":7,"kind":"move","queue":"q_error","state":"running"}""")]
    [InlineData("purge q_error --confirm q_error", "[]")]
    [InlineData("move q_error", "<html><body>Accepted</body></html>")]
    public async Task An_accepted_start_whose_answer_names_no_operation_says_it_may_have_started_and_how_to_look(string command, string body)
    {
        var posts = 0;
        var reads = 0;
        using var api = new Canned(request =>
        {
            Interlocked.Increment(ref request.Method == HttpMethod.Post ? ref posts : ref reads);
            return Respond(HttpStatusCode.Accepted, body);
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.StartUnknown, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("operationId", run.Err, StringComparison.Ordinal);
        Assert.Contains("may have started it", run.Err, StringComparison.Ordinal);
        Assert.Contains("conveyor operations --queue q_error --state running", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
        Assert.Equal((1, 0), (posts, reads));
    }

    /// <summary>The same against a real server that reads the request to start a move and drops the connection unanswered.</summary>
    [Fact]
    public async Task A_move_whose_connection_drops_after_the_request_was_read_says_it_may_have_started()
    {
        await using var server = await LocalServer.StartAsync(async context =>
        {
            using var body = new StreamReader(context.Request.Body);
            await body.ReadToEndAsync();
            context.Abort();
        });

        var run = await RunAsync($"move q_error --api {server.Address}", handler: null);

        Assert.True(run.ExitCode == ExitCodes.StartUnknown, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("may have started it", run.Err, StringComparison.Ordinal);
        Assert.Contains("conveyor operations --queue q_error --state running", run.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// A request to start a move that never left (the connection refused, by a stand-in and by a closed local port) started
    /// nothing: it stays 5 (try later), with no word of a move that may have started.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_request_to_start_an_operation_refused_before_it_was_sent_stays_unreachable(bool realSocket)
    {
        using var api = new Canned(_ => throw new HttpRequestException(
            HttpRequestError.ConnectionError, "Connection refused (conveyor.invalid:80)", new System.Net.Sockets.SocketException(111)));

        var run = realSocket
            ? await RunAsync("move q_error --api http://127.0.0.1:1", handler: null)
            : await RunAsync("move q_error", api);

        Assert.True(run.ExitCode == ExitCodes.Unreachable, $"{run.ExitCode}: {run.Err}");
        Assert.Contains("Cannot reach the Api", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("may have started", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    /// <summary>
    /// An Api that takes the read of a move's progress and never answers: <c>--timeout</c> still ends the wait, with the
    /// operation named, rather than the client's own timeout (100 s) long after it.
    /// </summary>
    [Fact]
    public async Task A_read_of_progress_that_is_never_answered_ends_at_the_timeout_naming_the_operation()
    {
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var api = new Holding(async (request, cancellationToken) =>
        {
            if (request.Method == HttpMethod.Get)
            {
                // Answered only when the test lets go of it, or when the CLI gives up on it.
                await held.Task.WaitAsync(cancellationToken);
            }

            return Respond(request.Method == HttpMethod.Post ? HttpStatusCode.Accepted : HttpStatusCode.OK,
                $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""");
        });

        var move = RunAsync("move q_error --timeout 1", api);
        try
        {
            await Eventually.AssertAsync(() =>
            {
                Assert.True(move.IsCompleted, "The move is still waiting for the read the Api holds.");
                return Task.CompletedTask;
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            held.TrySetResult();
        }

        var run = await move;
        Assert.Equal(ExitCodes.ProgressUnknown, run.ExitCode);
        Assert.Contains("did not answer before --timeout passed", run.Err, StringComparison.Ordinal);
        Assert.Contains($"follow it with: conveyor operation {OperationId} --wait", run.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// A <c>--timeout</c> longer than a timer can bound (about 49 days; a number of milliseconds given as seconds, or
    /// int.MaxValue meaning "forever") ended the process with a stack trace (exit 134) once the move had started: it is a
    /// usage error before anything is sent, and the longest one taken still waits as it should.
    /// </summary>
    [Theory]
    [InlineData("move q_error --timeout 86400000")]
    [InlineData("purge q_error --confirm q_error --timeout 2147483647")]
    [InlineData($"operation {OperationId} --wait --timeout 5000000")]
    public async Task A_timeout_past_the_longest_wait_is_a_usage_error_and_nothing_is_sent(string command)
    {
        var requests = 0;
        using var api = new Canned(request =>
        {
            Interlocked.Increment(ref requests);
            return Respond(request.Method == HttpMethod.Post ? HttpStatusCode.Accepted : HttpStatusCode.OK,
                $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running"}""");
        });

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.Usage, $"{run.ExitCode}: {run.Err}");
        Assert.Contains($"--timeout must be from 1 to {FilterSettings.MaxTimeoutSeconds} seconds", run.Err, StringComparison.Ordinal);
        Assert.Equal(0, requests);

        using var ended = new Canned(request => Respond(request.Method == HttpMethod.Post ? HttpStatusCode.Accepted : HttpStatusCode.OK,
            $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","moved":3}"""));
        var longest = await RunAsync($"move q_error --timeout {FilterSettings.MaxTimeoutSeconds}", ended);
        Assert.True(longest.ExitCode == ExitCodes.Ok, $"{longest.ExitCode}: {longest.Err}");
        Assert.Contains("moved 3 message(s)", longest.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Json_output_escapes_control_characters_and_keeps_the_text()
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, $$$"""[{"name":"q{{{J(Attack)}}}_error"}]"""));

        var run = await RunAsync("queues --json", api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.DoesNotContain(run.Out, c => char.IsControl(c) && c is not '\n' and not '\r');
        Assert.Equal($"q{Attack}_error", JsonDocument.Parse(run.Out).RootElement[0].GetProperty("name").GetString());
    }

    /// <summary>
    /// <c>--json</c> writes text as it is where it is safe to (System.Text.Json's default would write <c>Zürich</c> as
    /// <c>Z\u00FCrich</c> and <c>'id'</c> as <c>\u0027id\u0027</c>), and escapes what the views make visible, so piping
    /// it to a terminal is as safe as the table.
    /// </summary>
    [Fact]
    public async Task Json_output_keeps_readable_text_as_it_is_and_escapes_what_a_terminal_would_act_on_or_hide()
    {
        const string Readable = "Zürich 'id' a+b <none> & 日本 😀 `x` ~";
        const string Hidden = "\u202e\u200b\u00ad\u2028\ue000\U000E0041\u001b\u0085\u007f";
        var name = $"{Readable}\"q\"\\{Hidden}\nat A\tB";
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, $$$"""[{"name":"{{{J(name)}}}"}]"""));

        var run = await RunAsync("queues --json", api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Contains(
            $"\"{Readable}\\\"q\\\"\\\\" + @"\u202E\u200B\u00AD\u2028\uE000\uDB40\uDC41\u001B\u0085\u007F\nat A\tB" + "\"",
            run.Out, StringComparison.Ordinal);
        Assert.DoesNotContain(run.Out, c => (char.IsControl(c) && c is not '\n' and not '\r') || char.GetUnicodeCategory(c) is
            System.Globalization.UnicodeCategory.Format or System.Globalization.UnicodeCategory.LineSeparator or System.Globalization.UnicodeCategory.PrivateUse);
        Assert.Equal(name, JsonDocument.Parse(run.Out).RootElement[0].GetProperty("name").GetString());
    }

    [Theory]
    [InlineData("messages q_error", """{"queueDepth":4,"messages":[],"stoppedEarly":"No more [messages] arrived."}""")]
    [InlineData("groups q_error", """{"queueDepth":4,"examined":0,"groups":[],"ungrouped":0,"stoppedEarly":"No more [messages] arrived."}""")]
    public async Task An_inspection_that_stopped_early_says_only_part_of_the_queue_was_seen_and_why(string command, string body)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, body));

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Contains("Only part of the queue was seen: No more [messages] arrived.", run.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_message_id_with_brackets_is_shown_as_it_is_above_its_body()
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK,
            """{"queueDepth":1,"messages":[{"messageId":"id[1]","stackTrace":"at A","bodyPreview":"{}"}]}"""));

        var run = await RunAsync("messages q_error --body", api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Contains("#1 id[1]", run.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("[[", run.Out, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("orders[bogus]_error")]
    [InlineData("[link=https://evil.example/]x[/]")]
    [InlineData("q\u001b]0;PWNED\u0007")]
    public async Task The_progress_bar_shows_a_queue_name_as_text_not_markup(string queue)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK,
            $$$"""{"operationId":"{{{OperationId}}}","state":"succeeded","kind":"move","queue":"{{{J(queue)}}}","examined":1,"queueDepthAtStart":1}"""));
        var (operation, shown) = await WaitWithProgressBarAsync(api);

        Assert.Equal("succeeded", operation.GetProperty("state").GetString());
        Assert.Contains(Printable.Text(queue), shown, StringComparison.Ordinal);
        Assert.DoesNotContain("\u001b]8;", shown, StringComparison.Ordinal);
        Assert.DoesNotContain("PWNED\u0007", shown, StringComparison.Ordinal);
    }

    /// <summary>
    /// A command the CLI tells the operator to run quotes a value a shell would read otherwise: a queue name (RabbitMQ
    /// takes almost any characters) or the Api's text with a space, a quote or a metacharacter was pasted as it was, so
    /// <c>--queue orders error;rm x</c> ran another command. Such a value is put in single quotes; a plain name is not.
    /// The command line is split at '|' here, so that an argument may hold spaces.
    /// </summary>
    [Theory]
    [InlineData("move|orders error;rm x", 502, "<html>Bad Gateway</html>", "conveyor operations --queue 'orders error;rm x' --state running")]
    [InlineData("purge|it's_error|--confirm|it's_error", 504, "<html>Gateway Timeout</html>", "conveyor operations --queue 'it'\\''s_error' --state running")]
    [InlineData("move|q_error", 502, "<html>Bad Gateway</html>", "conveyor operations --queue q_error --state running")]
    [InlineData($"job|{OperationId}", 200, $$"""{"jobId":"{{OperationId}}","kind":"pay $(id)","status":"dead-lettered"}""", $"conveyor move 'pay $(id)_error' --job-id {OperationId}")]
    // A value beginning with '-' would be read as an option: given with '=' (a queue argument as --queue=).
    [InlineData("move|--queue=-weird error", 502, "<html>Bad Gateway</html>", "conveyor operations --queue='-weird error' --state running")]
    [InlineData("move|--queue=-weird_error", 502, "<html>Bad Gateway</html>", "conveyor operations --queue=-weird_error --state running")]
    [InlineData($"job|{OperationId}", 200, $$"""{"jobId":"{{OperationId}}","kind":"-weird","status":"dead-lettered"}""", $"conveyor move --queue=-weird_error --job-id {OperationId}")]
    [InlineData("groups|orders error;rm x", 200, """{"examined":3,"queueDepth":3,"groups":[{"groupId":"g$(id)","count":2},{"groupId":"h","count":1}]}""", "conveyor move 'orders error;rm x' --group 'g$(id)'")]
    [InlineData("groups|--queue=-weird_error", 200, """{"examined":1,"queueDepth":1,"groups":[{"groupId":"-g","count":1}]}""", "conveyor move --queue=-weird_error --group=-g")]
    // The run-now --kind that a gateway's 504 cut off says how to run it again: a kind beginning with '-' given with '='.
    [InlineData("run-now|--kind=-weird|--limit|5", 504, "<html>Gateway Timeout</html>", "conveyor run-now --kind=-weird --limit 5")]
    [InlineData("run-now|--kind|pay x", 502, "<html>Bad Gateway</html>", "conveyor run-now --kind 'pay x'")]
    public async Task A_command_the_cli_says_to_run_quotes_values_a_shell_would_read_otherwise(string command, int status, string body, string hint)
    {
        using var api = new Canned(_ => Respond((HttpStatusCode)status, body));

        var run = await RunAsync(command.Split('|'), api);

        Assert.Contains(hint, run.Out + run.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// A command the CLI tells the operator to run, for a queue whose name holds control or invisible characters (an escape
    /// sequence, a carriage return, a line feed, a right-to-left override): the name was put in single quotes and then shown
    /// with those characters as escapes (<c>'pay\u001B[2K_error'</c>), which a shell reads as they stand, so the pasted
    /// command named another queue. Such a name is given in <c>$'...'</c> quotes with each such character as the escapes of
    /// its UTF-8 bytes, which bash and zsh read back as the name itself: run through bash, the printed line passes the
    /// queue's exact name, and the line itself holds no character a terminal would act on.
    /// </summary>
    [Theory]
    [InlineData("pay\u001b[2K")]
    [InlineData("pay\r\nrm -rf x")]
    [InlineData("pay\u202eliated")]
    [InlineData("it's \\x41 \u0085\u200b")]
    [InlineData("-dash\u001b")]
    public async Task A_printed_command_for_a_queue_with_control_characters_pastes_into_bash_as_that_queue(string kind)
    {
        var queue = kind + "_error";
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, $$"""{"jobId":"{{OperationId}}","kind":"{{J(kind)}}","status":"dead-lettered"}"""));

        var run = await RunAsync($"job {OperationId}", api);

        Assert.True(run.ExitCode == ExitCodes.Ok, $"{run.ExitCode}: {run.Err}");
        Assert.DoesNotContain(run.Out, c => (char.IsControl(c) && c != '\n') || char.GetUnicodeCategory(c) == System.Globalization.UnicodeCategory.Format);
        var line = run.Out.Split('\n').Single(l => l.Contains("Move it back with: ", StringComparison.Ordinal));
        var pasted = line[(line.IndexOf("Move it back with: ", StringComparison.Ordinal) + "Move it back with: ".Length)..];
        var words = await WordsAsBashReadsAsync(pasted);
        string[] queueWords = queue.StartsWith('-') ? [$"--queue={queue}"] : [queue];
        Assert.Equal(["move", .. queueWords, "--job-id", OperationId], words);
    }

    /// <summary>
    /// The same for the commands printed with a queue the operator gave (which may hold such characters when copied from
    /// the Api's list): a start cut off by a gateway's 502 says how to look for it, and a queue's groups how to move the
    /// largest. Neither line prints the queue's characters raw, and the heading of the groups' table neither.
    /// </summary>
    [Theory]
    [InlineData("move", "q\u001b[2K\r_error", 502, "<html>Bad Gateway</html>", "Look before starting it again: ")]
    [InlineData("groups", "q\u001b[2K\r_error", 200, """{"examined":1,"queueDepth":1,"groups":[{"groupId":"g1","count":1}]}""", "Move the largest group back with: ")]
    public async Task A_queue_given_with_control_characters_is_never_printed_raw_and_pastes_back_as_itself(
        string command, string queue, int status, string body, string lead)
    {
        using var api = new Canned(_ => Respond((HttpStatusCode)status, body));

        var run = await RunAsync([command, queue], api);

        var printed = run.Out + run.Err;
        Assert.DoesNotContain(printed, c => char.IsControl(c) && c is not '\n');
        var line = printed.Split('\n').Single(l => l.Contains(lead, StringComparison.Ordinal));
        var words = await WordsAsBashReadsAsync(line[(line.IndexOf(lead, StringComparison.Ordinal) + lead.Length)..]);
        Assert.Contains(queue, words);
    }

    /// <summary>
    /// Names in the tables (a queue in <c>queues</c>, in <c>operations</c>) that hold a NUL, a carriage return, a line feed,
    /// an erase-line sequence or a right-to-left override never send them to the terminal: the line breaks are shown as
    /// spaces (a cell is one line), the others as escapes.
    /// </summary>
    [Theory]
    [InlineData("queues", """[{"name":"a\u0000b\rc\nd\u001b[2Ke\u202ef_error","kind":"error","sourceQueue":"a\u0000b","messages":1,"consumers":0}]""")]
    [InlineData("operations", $$"""[{"operationId":"{{OperationId}}","state":"succeeded","kind":"move","queue":"a\u0000b\rc\nd\u001b[2Ke\u202ef_error","target":"\r\n"}]""")]
    public async Task A_queue_name_with_control_characters_in_a_table_is_shown_as_escapes(string command, string body)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, body));

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.Ok, $"{run.ExitCode}: {run.Err}");
        Assert.DoesNotContain(run.Out, c => (char.IsControl(c) && c is not '\n') || c == '\u202e');
        // A cell is one line: a line break in it is shown as a space, as in an exception's message.
        Assert.True(run.Out.Contains(@"a\u0000b c d\u001B[2Ke\u202Ef_error", StringComparison.Ordinal), run.Out);
    }

    /// <summary>
    /// A value that goes into a command the CLI prints to run (a dead-lettered job's kind, the largest group's id, the last
    /// operation id of a full page, a page's nextCursor) holding a NUL or an unpaired surrogate: no command line can carry
    /// it (bash ends a word at a NUL, and so does the kernel's argument list; a lone surrogate has no UTF-8 form), so any
    /// such command would name something else. It is an answer no Conveyor Api gives (6), saying why, with no command to
    /// paste; and as for any other answer the Api does not give, nothing is printed: the job's view, the groups' or the
    /// operations' table, the page of jobs were printed first and the command ended with 6 after them. <c>--follow</c>
    /// checks a page's cursor before printing its jobs. An unpaired surrogate, escaped in the JSON (<c>\ud800</c>), is
    /// refused by the JSON reader when the value is read, which is now before anything is printed too.
    /// </summary>
    [Theory]
    [InlineData($"job {OperationId}", $$"""{"jobId":"{{OperationId}}","kind":"pay\u0000x","status":"dead-lettered"}""", "a NUL character")]
    [InlineData($"job {OperationId} --wait 5", $$"""{"jobId":"{{OperationId}}","kind":"pay\u0000x","status":"dead-lettered"}""", "a NUL character")]
    [InlineData($"job {OperationId}", $$"""{"jobId":"{{OperationId}}","kind":"pay\ud800x","status":"dead-lettered"}""", "UTF-16 JSON text")]
    [InlineData("groups q_error", """{"examined":2,"queueDepth":2,"groups":[{"groupId":"g\u0000h","count":2}]}""", "a NUL character")]
    [InlineData("groups q_error", """{"examined":2,"queueDepth":2,"groups":[{"groupId":"g\udc00","count":2}]}""", "UTF-16 JSON text")]
    [InlineData("operations --limit 1", """[{"operationId":"a\u0000b","kind":"move","queue":"q_error","state":"succeeded"}]""", "operationId an id")]
    [InlineData("audit --limit 1", """[{"operationId":"a\u0000b","kind":"purge","queue":"q_error","state":"succeeded"}]""", "operationId an id")]
    [InlineData("jobs", $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c\u0000d"}""", "nextCursor a cursor")]
    [InlineData("jobs --order oldest", $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c\u0000d"}""", "nextCursor a cursor")]
    [InlineData("jobs --follow", $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c\u0000d"}""", "nextCursor a cursor")]
    [InlineData("jobs --follow --json", $$"""{"items":[{"jobId":"{{FirstJob}}","status":"queued"}],"nextCursor":"c\u0000d"}""", "nextCursor a cursor")]
    public async Task A_value_for_a_command_to_paste_holding_a_nul_ends_with_6_printing_nothing(string command, string body, string said)
    {
        var reads = 0;
        // A second read (--follow asking for the page after the cursor) is refused, so that a follower that took the
        // cursor ends instead of polling on.
        using var api = new Canned(_ => Interlocked.Increment(ref reads) == 1
            ? Respond(HttpStatusCode.OK, body)
            : Respond(HttpStatusCode.NotFound, """{"title":"Not Found"}"""));

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.UnexpectedAnswer, $"{run.ExitCode}: {run.Out}{run.Err}");
        Assert.True(run.Err.Contains(said, StringComparison.Ordinal), run.Err);
        Assert.Equal("", run.Out);
        Assert.DoesNotContain("conveyor move", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("\0", run.Err, StringComparison.Ordinal);
        Assert.Equal(1, reads);
    }

    /// <summary>
    /// The same values where the CLI prints no command to run: a job that is not dead-lettered (its view names no queue),
    /// and <c>--json</c> without <c>--follow</c>, which prints the Api's answer (a NUL as the JSON escape <c>\u0000</c>) and
    /// no command. Nothing in them is refused: each is shown, exit 0. (A page's cursor is another matter: one that
    /// <c>--after</c> or <c>--before</c> would refuse is not the Api's, with <c>--json</c> too; see
    /// <see cref="A_page_whose_cursor_is_not_one_the_cli_takes_ends_with_6_printing_nothing"/>.)
    /// </summary>
    [Theory]
    [InlineData($"job {OperationId}", $$"""{"jobId":"{{OperationId}}","kind":"pay\u0000x","status":"queued","attempts":1}""")]
    [InlineData($"job {OperationId} --json", $$"""{"jobId":"{{OperationId}}","kind":"pay\u0000x","status":"dead-lettered"}""")]
    [InlineData("groups q_error --json", """{"examined":2,"queueDepth":2,"groups":[{"groupId":"g\u0000h","count":2}]}""")]
    public async Task A_value_holding_a_nul_where_no_command_is_printed_is_shown_escaped(string command, string body)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK, body));

        var run = await RunAsync(command, api);

        Assert.True(run.ExitCode == ExitCodes.Ok, $"{run.ExitCode}: {run.Out}{run.Err}");
        Assert.Contains("\\u0000", run.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("\0", run.Out + run.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// The progress bar of an operation that ended without doing all it set out to shows the share it examined, not
    /// 100 %: a failed move that examined 3 of 10 messages showed a full bar above a summary of 3 examined.
    /// A succeeded one still fills it (a --limit may leave messages unexamined).
    /// </summary>
    [Theory]
    [InlineData("failed", "", "30%")]
    [InlineData("interrupted", "", "30%")]
    [InlineData("succeeded", ",\"partial\":true", "30%")]
    [InlineData("succeeded", "", "100%")]
    public async Task The_progress_bar_of_an_operation_that_did_not_complete_shows_how_far_it_got(string state, string more, string shown)
    {
        using var api = new Canned(_ => Respond(HttpStatusCode.OK,
            $$"""{"operationId":"{{OperationId}}","state":"{{state}}","kind":"move","queue":"q_error","examined":3,"moved":3,"queueDepthAtStart":10{{more}}}"""));
        var (operation, terminal) = await WaitWithProgressBarAsync(api);

        Assert.Equal(state, operation.GetProperty("state").GetString());
        Assert.Contains(shown, terminal, StringComparison.Ordinal);
        if (shown != "100%")
        {
            Assert.DoesNotContain("100%", terminal, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task An_answer_larger_than_the_cap_ends_with_exit_code_6_without_reading_it_all(bool lengthGiven)
    {
        using var api = new Canned(_ =>
        {
            // "[", then spaces, then "]": a valid, empty list, one byte over the cap.
            var content = new StreamContent(new GeneratedJson(ConveyorClient.MaxAnswerBytes + 1));
            content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
            content.Headers.ContentLength = lengthGiven ? ConveyorClient.MaxAnswerBytes + 1L : null;
            return new HttpResponseMessage(HttpStatusCode.OK) { Content = content };
        });

        var run = await RunAsync("queues", api);

        Assert.Equal(ExitCodes.UnexpectedAnswer, run.ExitCode);
        Assert.Contains("larger than 64 MiB", run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    /// <summary>
    /// The Api answers every error with a problem document; another server's error (a web server's page, the
    /// RabbitMQ management port's 406) says nothing of the Api, whatever its status.
    /// </summary>
    [Theory]
    [InlineData("queues", 404, "text/html", "<html><body>Not Found</body></html>")]
    [InlineData("messages q_error", 406, "application/json", """{"error":"not_acceptable","reason":"Not Acceptable"}""")]
    [InlineData("queues", 401, "text/html", "<html><body>Sign in</body></html>")]
    [InlineData("move q_error --dry-run", 409, "text/plain", "Conflict")]
    [InlineData("queues", 500, "text/html", "<html><body>Internal Server Error</body></html>")]
    [InlineData("queues", 404, "application/problem+json", "[1]")]
    public async Task An_error_that_is_not_a_problem_document_ends_with_exit_code_6_whatever_its_status(
        string command, int status, string mediaType, string body)
    {
        using var api = new Canned(_ => Respond((HttpStatusCode)status, body, mediaType));

        var run = await RunAsync(command, api);

        Assert.Equal(ExitCodes.UnexpectedAnswer, run.ExitCode);
        Assert.Contains($"the answer is not one a Conveyor Api gives ({status} with a {mediaType} body", run.Err, StringComparison.Ordinal);
        Assert.Contains(CliContext.ApiUrlVariable, run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    [Theory]
    [InlineData(404, "application/problem+json", """{"title":"Queue not found"}""", ExitCodes.NotFoundOrConflict)]
    [InlineData(401, "application/problem+json", """{"title":"Unauthorized"}""", ExitCodes.Auth)]
    // A gateway in front of the Api that cannot reach it says so in its own words.
    [InlineData(502, "text/html", "<html><body>Bad Gateway</body></html>", ExitCodes.Unreachable)]
    [InlineData(504, "text/plain", "Gateway Timeout", ExitCodes.Unreachable)]
    public async Task A_problem_document_and_a_gateways_page_keep_the_exit_code_of_their_status(int status, string mediaType, string body, int exitCode)
    {
        using var api = new Canned(_ =>
        {
            var answer = Respond((HttpStatusCode)status, body, mediaType);
            // A read refused with 502 or 504 is tried again; a wait longer than the CLI's budget ends it at once.
            answer.Headers.RetryAfter = new System.Net.Http.Headers.RetryConditionHeaderValue(TimeSpan.FromHours(1));
            return answer;
        });

        var run = await RunAsync("queues", api);

        Assert.Equal(exitCode, run.ExitCode);
    }

    /// <summary>An Api that answers a move with an operation already over: --no-wait reports how it ended.</summary>
    [Fact]
    public async Task Without_waiting_an_operation_the_answer_shows_finished_exits_as_it_ended()
    {
        using var api = new Canned(request => request.Method == HttpMethod.Post
            ? Respond(HttpStatusCode.Accepted, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","dryRun":false}""")
            : Respond(HttpStatusCode.OK, $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"succeeded","moved":3}"""));

        var run = await RunAsync("move q_error --no-wait", api);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Contains("moved 3 message(s)", run.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("Follow it with", run.Err, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_redirect_is_not_followed_and_names_where_it_points()
    {
        var elsewhere = new ConcurrentQueue<string>();
        await using var other = await LocalServer.StartAsync(async context =>
        {
            using var reader = new StreamReader(context.Request.Body);
            elsewhere.Enqueue($"{context.Request.Method} {context.Request.Path} {await reader.ReadToEndAsync()}");
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync("""[{"name":"elsewhere_error","kind":"error","messages":1,"consumers":0}]""");
        });
        await using var api = await LocalServer.StartAsync(context =>
        {
            context.Response.StatusCode = HttpMethods.IsGet(context.Request.Method) ? StatusCodes.Status302Found : StatusCodes.Status307TemporaryRedirect;
            context.Response.Headers.Location = new Uri(other.Address, context.Request.Path.Value!.TrimStart('/')).ToString();
            return Task.CompletedTask;
        });

        var queues = await RunAsync($"queues --api {api.Address}", handler: null);
        var move = await RunAsync($"move q_error --dry-run --api {api.Address}", handler: null);

        Assert.Equal(ExitCodes.UnexpectedAnswer, queues.ExitCode);
        Assert.Contains($"a redirect (302) to {other.Address}api/error-queues", queues.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("elsewhere_error", queues.Out, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.UnexpectedAnswer, move.ExitCode);
        Assert.Contains($"a redirect (307) to {other.Address}api/error-queues/q_error/move", move.Err, StringComparison.Ordinal);
        Assert.Empty(elsewhere);
    }

    /// <summary>
    /// An Api URL with a user and password: HttpClient would not send them, and every message naming the
    /// Api (such as "Cannot reach the Api at …") would print the password. Refused before any request, unshown.
    /// </summary>
    [Theory]
    [InlineData("http://ops:s3cret-pass@127.0.0.1:9/")]
    [InlineData("https://s3cret-pass@conveyor.example.com/")]
    public async Task An_api_url_with_credentials_is_a_usage_error_that_does_not_print_them(string url)
    {
        using var api = new Counted(HttpStatusCode.OK, "[]");

        var run = await RunAsync($"queues --api {url}", api);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains("--api", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cret-pass", run.Out + run.Err, StringComparison.Ordinal);
        Assert.Equal(0, api.Requests);
    }

    /// <summary>A string as it goes inside a JSON string literal.</summary>
    /// <summary>Waits for operation <see cref="OperationId"/> from <paramref name="api"/> with its progress bar drawn on an interactive ANSI terminal; what that terminal showed.</summary>
    private static async Task<(JsonElement Operation, string Terminal)> WaitWithProgressBarAsync(Canned api)
    {
        using var terminal = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(terminal),
            Ansi = AnsiSupport.Yes,
            ColorSystem = ColorSystemSupport.TrueColor,
            Interactive = InteractionSupport.Yes,
        });
        console.Profile.Width = 200;
        var cli = new CliContext(console, console, TextWriter.Null, api, _ => null);
        using var client = new ConveyorClient(new Uri("http://conveyor.invalid/"), "key", api);

        var operation = await Operations.WaitAsync(cli, client, Guid.Parse(OperationId), showProgress: true, timeout: null, startedHere: true, CancellationToken.None);
        return (operation, terminal.ToString());
    }

    /// <summary>
    /// The words bash passes to <c>conveyor</c> when <paramref name="line"/> (<c>conveyor move ...</c>) is pasted into it, as
    /// they reach the CLI (decoded from UTF-8): a function of that name prints them, without running anything else.
    /// </summary>
    private static async Task<string[]> WordsAsBashReadsAsync(string line)
    {
        var start = new System.Diagnostics.ProcessStartInfo("bash")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            StandardInputEncoding = new UTF8Encoding(false),
            StandardOutputEncoding = Encoding.UTF8,
        };
        start.Environment["LC_ALL"] = "C.UTF-8";
        using var bash = System.Diagnostics.Process.Start(start) ?? throw new InvalidOperationException("could not start bash");
        await bash.StandardInput.WriteAsync($"conveyor() {{ printf '%s\\0' \"$@\"; }}\n{line}\n");
        bash.StandardInput.Close();
        var output = bash.StandardOutput.ReadToEndAsync();
        var errors = bash.StandardError.ReadToEndAsync();
        await bash.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(bash.ExitCode == 0, $"bash: {await errors}");
        return (await output).Split('\0')[..^1];
    }

    private static string J(string text) => JsonSerializer.Serialize(text)[1..^1];

    private static int Occurrences(string text, string part) =>
        System.Text.RegularExpressions.Regex.Count(text, System.Text.RegularExpressions.Regex.Escape(part));

    /// <summary>HTML, or JSON as the Api sends it: an error as a problem document.</summary>
    /// <summary>
    /// The Api's answer to a batch of two whose last <paramref name="refused"/> jobs met a submission in progress
    /// (JobsApi.AnswerBatch with SubmitStatus.InFlight): 409 with Retry-After: 1, each job's answer in <c>jobs</c>.
    /// </summary>
    private static HttpResponseMessage InProgress(int refused)
    {
        const string error = """{"status":409,"title":"Submission in progress","detail":"Another request for the same job is being processed. Retry shortly."}""";
        var jobs = Enumerable.Range(0, 2).Select(index => index < 2 - refused ? AcceptedJob(index) : $$"""{"index":{{index}},"error":{{error}}}""");
        var title = refused == 1 ? "Submission in progress" : "Some jobs of the batch were not accepted";
        return RespondAfter(TimeSpan.FromSeconds(1), HttpStatusCode.Conflict,
            $$"""{"type":"https://tools.ietf.org/html/rfc9110#section-15.5.10","title":"{{title}}","status":409,"detail":"{{2 - refused}} of 2 jobs were accepted; the answer of each is in 'jobs'.","jobs":[{{string.Join(',', jobs)}}]}""");
    }

    private static string AcceptedJob(int index) =>
        $$"""{"index":{{index}},"jobId":"{{Guid.NewGuid()}}","kind":"charge-payment","status":"queued"}""";

    private static HttpResponseMessage Respond(HttpStatusCode status, string body) =>
        Respond(status, body, body.StartsWith('<') ? "text/html" : (int)status >= 400 ? "application/problem+json" : "application/json");

    /// <summary>As <see cref="Respond(HttpStatusCode, string)"/>, asking to come back after <paramref name="retryAfter"/>.</summary>
    private static HttpResponseMessage RespondAfter(TimeSpan retryAfter, HttpStatusCode status, string body)
    {
        var answer = Respond(status, body);
        answer.Headers.RetryAfter = new System.Net.Http.Headers.RetryConditionHeaderValue(retryAfter);
        return answer;
    }

    private static HttpResponseMessage Respond(HttpStatusCode status, string body, string mediaType) =>
        new(status) { Content = new StringContent(body, Encoding.UTF8, mediaType) };

    private static Task<CliRun> RunAsync(string command, HttpMessageHandler? handler) =>
        RunAsync(command, handler, new SharedText(), CancellationToken.None);

    private static Task<CliRun> RunAsync(string[] args, HttpMessageHandler? handler) =>
        RunAsync(args, handler, new SharedText(), CancellationToken.None);

    /// <summary>With a stderr the test may read while the command runs, and its Ctrl+C.</summary>
    private static Task<CliRun> RunAsync(string command, HttpMessageHandler? handler, SharedText stderr, CancellationToken interrupt) =>
        RunAsync(command.Split(' '), handler, stderr, interrupt);

    private static async Task<CliRun> RunAsync(string[] args, HttpMessageHandler? handler, SharedText stderr, CancellationToken interrupt)
    {
        using var stdout = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = "http://conveyor.invalid/",
            [CliContext.ApiKeyVariable] = "a-key",
        };
        var exitCode = await CliApp.RunAsync(args, stdout, stderr.Writer, handler, environment, interrupt);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    private sealed record CliRun(int ExitCode, string Out, string Err);

    /// <summary>A file of charge-payment job requests, one a line, for submit; deleted on dispose.</summary>
    private sealed class ChargeFile : IDisposable
    {
        private ChargeFile(string path) => Path = path;

        public string Path { get; }

        public static async Task<ChargeFile> WriteAsync(int count)
        {
            var file = new ChargeFile(System.IO.Path.GetTempFileName());
            await File.WriteAllLinesAsync(file.Path, Enumerable.Range(0, count).Select(_ => JobRequests.ChargePayment(Guid.NewGuid())));
            return file;
        }

        /// <summary>The path, so that a command line can name the file as <c>{file}</c>.</summary>
        public override string ToString() => Path;

        public void Dispose() => File.Delete(Path);
    }

    private sealed class Canned(Func<HttpRequestMessage, HttpResponseMessage> answer) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(answer(request));
    }

    /// <summary>Answers every request alike and counts them, for a test that checks nothing was sent.</summary>
    private sealed class Counted(HttpStatusCode status, string body) : HttpMessageHandler
    {
        private int _requests;

        public int Requests => Volatile.Read(ref _requests);

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _requests);
            return Task.FromResult(Respond(status, body));
        }
    }

    /// <summary>Answers with <c>answer</c>, which may take its time and is given the request's cancellation.</summary>
    private sealed class Holding(Func<HttpRequestMessage, CancellationToken, Task<HttpResponseMessage>> answer) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            answer(request, cancellationToken);
    }

    /// <summary>"[", spaces, "]", <paramref name="length"/> bytes in all, made as they are read.</summary>
    private sealed class GeneratedJson(long length) : Stream
    {
        private long _position;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count)
        {
            var read = (int)Math.Min(count, length - _position);
            for (var i = 0; i < read; i++, _position++)
            {
                buffer[offset + i] = _position == 0 ? (byte)'[' : _position == length - 1 ? (byte)']' : (byte)' ';
            }

            return read;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    /// <summary>A web server on a free local port that answers every request with <c>handle</c>.</summary>
    internal sealed class LocalServer(LoopbackWebHost host) : IAsyncDisposable
    {
        public Uri Address => host.BaseAddress;

        public static async Task<LocalServer> StartAsync(RequestDelegate handle) =>
            new(await LoopbackWebHost.StartAsync(app => app.Run(handle)));

        public ValueTask DisposeAsync() => host.DisposeAsync();
    }
}
