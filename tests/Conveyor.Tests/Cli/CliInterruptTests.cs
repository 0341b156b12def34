using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Conveyor.Cli;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Tests.Cli;

/// <summary>
/// Ctrl+C while the CLI waits for a move: the wait ends with its own exit code and no stack trace, and the
/// operator is told that the move goes on and how to follow it, which it does whatever the CLI does.
/// </summary>
public sealed class CliInterruptTests
{
    private const string OperationId = "0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182";
    private const string Running = $$"""{"operationId":"{{OperationId}}","kind":"move","queue":"q_error","state":"running","examined":1,"queueDepthAtStart":9}""";

    /// <summary>The command's cancellation (what Ctrl+C triggers) during the wait: a clear ending, never an exception.</summary>
    [Theory]
    [InlineData("move q_error")]
    [InlineData("move q_error --json")]
    [InlineData($"operation {OperationId} --wait")]
    public async Task A_cancelled_wait_for_an_operation_names_it_and_ends_with_exit_code_130(string command)
    {
        using var interrupt = new CancellationTokenSource();
        using var api = new Canned(request =>
        {
            if (request.Method == HttpMethod.Get)
            {
                // Ctrl+C while the CLI reads the operation's progress.
                interrupt.Cancel();
            }

            return new HttpResponseMessage(request.Method == HttpMethod.Post ? HttpStatusCode.Accepted : HttpStatusCode.OK)
            {
                Content = new StringContent(Running, Encoding.UTF8, "application/json"),
            };
        });
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = StandInEnvironment();

        var exitCode = await CliApp.RunAsync(command.Split(' '), stdout, stderr, api, environment, interrupt.Token);

        Assert.Equal(ExitCodes.Interrupted, exitCode);
        Assert.Contains($"stopped waiting for operation {OperationId}, which goes on", stderr.ToString(), StringComparison.Ordinal);
        Assert.Contains($"Follow it with: conveyor operation {OperationId} --wait", stderr.ToString(), StringComparison.Ordinal);
        Assert.Equal("", stdout.ToString());
    }

    /// <summary>
    /// The conveyor process itself, sent SIGINT (what Ctrl+C sends) while it waits for a move: it ends as above,
    /// saying which move goes on, instead of dying where it stood.
    /// </summary>
    [Fact]
    public async Task Ctrl_c_while_the_conveyor_process_waits_for_a_move_says_the_move_goes_on()
    {
        await using var api = await CliHostileAnswerTests.LocalServer.StartAsync(async context =>
        {
            context.Response.StatusCode = HttpMethods.IsPost(context.Request.Method) ? StatusCodes.Status202Accepted : StatusCodes.Status200OK;
            context.Response.ContentType = "application/json";
            await context.Response.WriteAsync(Running);
        });
        // Through env(1), which sets SIGINT back to its default: a test run started in the background (scripts/test.sh
        // under CI, any "cmd &") passes SIGINT on ignored, and .NET leaves an ignored signal ignored, as it should.
        var start = new ProcessStartInfo("env")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("--default-signal=INT");
        start.ArgumentList.Add("dotnet");
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Conveyor.Cli.dll"));
        foreach (var arg in new[] { "move", "q_error", "--api", api.Address.ToString() })
        {
            start.ArgumentList.Add(arg);
        }

        start.Environment[CliContext.ApiKeyVariable] = "a-key";
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
        var stdout = process.StandardOutput.ReadToEndAsync();
        string Err()
        {
            lock (stderr)
            {
                return stderr.ToString();
            }
        }

        try
        {
            await Eventually.AssertAsync(() =>
            {
                Assert.Contains($"Started move {OperationId}.", Err(), StringComparison.Ordinal);
                return Task.CompletedTask;
            });

            using (var kill = Process.Start("kill", ["-INT", process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
            {
                await kill.WaitForExitAsync();
            }

            using var ended = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await process.WaitForExitAsync(ended.Token);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }
        }

        await stdout;
        Assert.Equal(ExitCodes.Interrupted, process.ExitCode);
        Assert.Contains($"Follow it with: conveyor operation {OperationId} --wait", Err(), StringComparison.Ordinal);
    }

    /// <summary>
    /// Ctrl+C while the request to start a move or purge is on its way (an Api slow to check the queue or take its lock):
    /// the Api may have started it, and goes on with it whatever the CLI does. It said only "interrupted.", which reads as
    /// nothing done; it says the operation may have started and how to see it, still exit 130 and nothing on stdout.
    /// </summary>
    [Theory]
    [InlineData("move q_error")]
    [InlineData("purge q_error --confirm q_error --json")]
    public async Task Ctrl_c_before_the_api_answers_the_start_of_an_operation_says_it_may_have_started(string command)
    {
        using var interrupt = new CancellationTokenSource();
        var posts = 0;
        using var api = new Holding(async (request, cancellationToken) =>
        {
            Assert.Equal(HttpMethod.Post, request.Method);
            Interlocked.Increment(ref posts);
            interrupt.Cancel();
            await Task.Delay(Timeout.Infinite, cancellationToken);
            throw new InvalidOperationException("not reached");
        });
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = StandInEnvironment();

        var exitCode = await CliApp.RunAsync(command.Split(' '), stdout, stderr, api, environment, interrupt.Token);

        Assert.Equal(ExitCodes.Interrupted, exitCode);
        Assert.Equal(1, posts);
        var kind = command.Split(' ')[0];
        Assert.Contains($"before the Api answered the request to start the {kind}: it may have started it", stderr.ToString(), StringComparison.Ordinal);
        Assert.Contains("conveyor operations --queue q_error --state running", stderr.ToString(), StringComparison.Ordinal);
        Assert.Equal("", stdout.ToString());
    }

    /// <summary>
    /// Ctrl+C while submit sends its second batch: the first was accepted, the second may or may not have been. The CLI
    /// says how many jobs were accepted, which, and which were in flight, on stdout as the table or (with --json) as a
    /// summary a script can read, so that nobody has to guess what to send again; exit code 130 as for any Ctrl+C.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Ctrl_c_during_submit_says_which_jobs_were_accepted_and_which_were_in_flight(bool json)
    {
        using var interrupt = new CancellationTokenSource();
        var jobIds = new List<Guid>();
        var posts = 0;
        using var api = new Holding(async (request, cancellationToken) =>
        {
            if (Interlocked.Increment(ref posts) > 1)
            {
                // Ctrl+C while the second batch is on its way: the Api's answer never comes.
                interrupt.Cancel();
                await Task.Delay(Timeout.Infinite, cancellationToken);
            }

            var batch = await request.Content!.ReadFromJsonAsync<JsonElement>(cancellationToken);
            var answers = batch.GetProperty("jobs").EnumerateArray().Select((_, index) =>
            {
                var jobId = Guid.NewGuid();
                jobIds.Add(jobId);
                return new { index, jobId, kind = "charge-payment", status = "queued" };
            }).ToList();
            return new HttpResponseMessage(HttpStatusCode.Accepted) { Content = JsonContent.Create(new { jobs = answers }) };
        });
        var file = Path.GetTempFileName();
        await File.WriteAllLinesAsync(file, Enumerable.Range(0, 4).Select(_ => JobRequests.ChargePayment(Guid.NewGuid())));
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = StandInEnvironment();

        string[] args = ["submit", "charge-payment", file, "--batch-size", "2", .. json ? new[] { "--json" } : []];
        int exitCode;
        try
        {
            exitCode = await CliApp.RunAsync(args, stdout, stderr, api, environment, interrupt.Token);
        }
        finally
        {
            File.Delete(file);
        }

        Assert.Equal(ExitCodes.Interrupted, exitCode);
        Assert.Equal(2, jobIds.Count);
        var err = stderr.ToString();
        Assert.Contains("2 charge-payment jobs were accepted (line 1 to line 2)", err, StringComparison.Ordinal);
        Assert.Contains("line 3 to line 4 were being sent", err, StringComparison.Ordinal);
        Assert.Contains("Running the same command again is safe", err, StringComparison.Ordinal);
        if (json)
        {
            var summary = JsonDocument.Parse(stdout.ToString()).RootElement;
            Assert.True(summary.GetProperty("interrupted").GetBoolean());
            Assert.Equal(2, summary.GetProperty("accepted").GetInt32());
            Assert.Equal(jobIds, summary.GetProperty("jobs").EnumerateArray().Select(j => j.GetProperty("jobId").GetGuid()));
            Assert.Equal(["line 1", "line 2"], summary.GetProperty("jobs").EnumerateArray().Select(j => j.GetProperty("source").GetString()));
            Assert.Equal("line 3", summary.GetProperty("inFlight").GetProperty("from").GetString());
            Assert.Equal("line 4", summary.GetProperty("inFlight").GetProperty("to").GetString());
        }
        else
        {
            Assert.All(jobIds, id => Assert.Contains(id.ToString(), stdout.ToString(), StringComparison.Ordinal));
        }
    }

    /// <summary>The Api's address and a key, for a CLI whose requests a stand-in handler answers.</summary>
    private static Dictionary<string, string?> StandInEnvironment() => new()
    {
        [CliContext.ApiUrlVariable] = "http://conveyor.invalid/",
        [CliContext.ApiKeyVariable] = "a-key",
    };

    private sealed class Canned(Func<HttpRequestMessage, HttpResponseMessage> answer) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(answer(request));
    }

    /// <summary>Answers with <c>answer</c>, which may take its time and is given the request's cancellation.</summary>
    private sealed class Holding(Func<HttpRequestMessage, CancellationToken, Task<HttpResponseMessage>> answer) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            answer(request, cancellationToken);
    }
}
