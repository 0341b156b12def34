using System.Net.Http.Json;
using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.Cli;
using Conveyor.Contracts;
using Conveyor.Tests.Api;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Cli;

/// <summary>The <c>conveyor</c> CLI, run in-process against a running Api with an admin key.</summary>
[Collection(ConveyorCollection.Name)]
public sealed class CliTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    private const string Timeout = "System.TimeoutException";
    private const string Declined = "Conveyor.Worker.Failures.PermanentFailureException";

    [Fact]
    public async Task Queues_lists_the_error_queues_as_a_table_and_as_json()
    {
        await Broker.DeadLetterChargeAsync(Timeout, "timed out");

        await Eventually.AssertAsync(async () =>
        {
            var table = await RunAsync("queues");
            Assert.Equal(ExitCodes.Ok, table.ExitCode);
            Assert.Contains("charge-payment_error", table.Out, StringComparison.Ordinal);
            Assert.Contains("charge-payment ", table.Out, StringComparison.Ordinal);

            var json = await RunAsync("queues", "--json");
            // Other tests of the run may have left empty _error/_skipped queues behind: look at ours.
            var queue = Assert.Single(JsonDocument.Parse(json.Out).RootElement.EnumerateArray(),
                q => q.GetProperty("name").GetString() == ErrorQueueKit.ChargeErrors);
            Assert.Equal(1, queue.GetProperty("messages").GetInt64());
        });
    }

    /// <summary>
    /// No error queue yet (the broker makes one when its first message is dead-lettered or skipped): the table is empty and
    /// stderr says why, where an empty frame alone read as a failed listing; the JSON is the Api's empty array, nothing more.
    /// </summary>
    [Fact]
    public async Task Queues_with_no_error_queue_yet_says_so_on_stderr()
    {
        var table = await RunWithAnswerAsync(["queues"], System.Net.HttpStatusCode.OK, "application/json", "[]");
        var json = await RunWithAnswerAsync(["queues", "--json"], System.Net.HttpStatusCode.OK, "application/json", "[]");

        Assert.Equal((ExitCodes.Ok, ExitCodes.Ok), (table.ExitCode, json.ExitCode));
        Assert.Contains("Queue", table.Out, StringComparison.Ordinal);
        Assert.Contains("No _error or _skipped queue on this vhost yet", table.Err, StringComparison.Ordinal);
        Assert.Equal("[]", json.Out.Trim());
        Assert.Equal("", json.Err);
    }

    [Fact]
    public async Task Messages_and_groups_show_faults_without_changing_the_queue()
    {
        // The first names a job whose row is gone: moving it back would run it again.
        var first = await Broker.DeadLetterChargeAsync(Declined, "Account acct-1 was not found",
            extraHeaders: new Dictionary<string, object?> { [Conveyor.Contracts.JobHeaders.JobId] = Guid.NewGuid().ToString() });
        await Broker.DeadLetterChargeAsync(Declined, "Account acct-2 was not found");
        await Broker.DeadLetterChargeAsync(Timeout, "timed out");

        var messages = await RunAsync("messages", ErrorQueueKit.ChargeErrors, "--limit", "2", "--body");
        Assert.Equal(ExitCodes.Ok, messages.ExitCode);
        Assert.Contains(first.ToString(), messages.Out, StringComparison.Ordinal);
        Assert.Contains("PermanentFailureException", messages.Out, StringComparison.Ordinal);
        Assert.Contains("\"paymentId\"", messages.Out, StringComparison.Ordinal);
        Assert.Contains("Job status", messages.Out, StringComparison.Ordinal);
        Assert.Contains(ErrorQueueMessage.JobStatusMissing, messages.Out, StringComparison.Ordinal);

        var groups = await RunAsync("groups", ErrorQueueKit.ChargeErrors, "--json");
        Assert.Equal(ExitCodes.Ok, groups.ExitCode);
        var listed = JsonDocument.Parse(groups.Out).RootElement.GetProperty("groups");
        var counts = listed.EnumerateArray().Select(g => g.GetProperty("count").GetInt64());
        Assert.Equal([2L, 1L], counts);

        // The table ends with the command that moves the largest group back, which does what it says.
        var largest = listed[0].GetProperty("groupId").GetString()!;
        var table = await RunAsync("groups", ErrorQueueKit.ChargeErrors);
        Assert.Equal(ExitCodes.Ok, table.ExitCode);
        var hint = $"Move the largest group back with: conveyor move {ErrorQueueKit.ChargeErrors} --group {largest}";
        Assert.Contains(hint, table.Out, StringComparison.Ordinal);
        var dryRun = await RunAsync([.. hint[(hint.IndexOf("move ", StringComparison.Ordinal))..].Split(' '), "--dry-run"]);
        Assert.Equal(ExitCodes.Ok, dryRun.ExitCode);
        Assert.Contains("would have moved 2 message(s)", dryRun.Out, StringComparison.Ordinal);
        Assert.Equal(3u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>Headers another producer made up (see <see cref="HostileHeaderTests"/>) break neither the table nor the JSON.</summary>
    [Fact]
    public async Task Messages_and_groups_of_a_queue_with_hostile_headers_print_every_message()
    {
        var hostile = await HostileMessages.DeadLetterAsync(Broker);

        var table = await RunAsync("messages", ErrorQueueKit.ChargeErrors, "--limit", "50", "--body");
        Assert.Equal(ExitCodes.Ok, table.ExitCode);
        Assert.All(hostile.All, id => Assert.Contains(id, table.Out, StringComparison.Ordinal));

        var json = await RunAsync("messages", ErrorQueueKit.ChargeErrors, "--limit", "50", "--json");
        Assert.Equal(ExitCodes.Ok, json.ExitCode);
        var histories = JsonDocument.Parse(json.Out).RootElement.GetProperty("messages").EnumerateArray()
            .ToDictionary(m => m.GetProperty("messageId").GetString()!, m => m.GetProperty("faultHistory"));
        Assert.Equal(JsonValueKind.Array, histories[hostile.Harmless].ValueKind);
        Assert.All(hostile.Histories, h => Assert.Equal(h.Value, histories[h.Key].GetString()));

        var groups = await RunAsync("groups", ErrorQueueKit.ChargeErrors);
        Assert.Equal(ExitCodes.Ok, groups.ExitCode);
        Assert.Contains($"{hostile.All.Count} of {hostile.All.Count} message(s) examined", groups.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Move_dry_run_then_move_by_exception_type_then_audit()
    {
        for (var i = 0; i < 30; i++)
        {
            await Broker.DeadLetterChargeAsync(i % 2 == 0 ? Timeout : Declined, "failed");
        }

        var dryRun = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--exception-type", "TimeoutException", "--dry-run");
        Assert.Equal(ExitCodes.Ok, dryRun.ExitCode);
        Assert.Contains("would have moved 15 message(s)", dryRun.Out, StringComparison.Ordinal);
        Assert.Equal(30u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));

        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--exception-type", "TimeoutException", "--json");
        Assert.Equal(ExitCodes.Ok, move.ExitCode);
        var operation = JsonDocument.Parse(move.Out).RootElement;
        Assert.Equal(("succeeded", 15), (operation.GetProperty("state").GetString(), operation.GetProperty("moved").GetInt64()));
        Assert.Equal(15u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(15u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));

        var shown = await RunAsync("operation", operation.GetProperty("operationId").GetString()!);
        Assert.Equal(ExitCodes.Ok, shown.ExitCode);
        Assert.Contains("moved 15 message(s)", shown.Out, StringComparison.Ordinal);

        var audit = await RunAsync("audit", "--queue", ErrorQueueKit.ChargeErrors);
        Assert.Equal(ExitCodes.Ok, audit.ExitCode);
        Assert.Contains(ErrorQueueKit.AdminName, audit.Out, StringComparison.Ordinal);
        Assert.Contains("move (dry run)", audit.Out, StringComparison.Ordinal);

        var operations = await RunAsync("operations", "--json");
        Assert.Equal(2, JsonDocument.Parse(operations.Out).RootElement.GetArrayLength());

        var usDate = await RunAsync("audit", "--since", "12/01/2026");
        Assert.Equal(ExitCodes.Usage, usDate.ExitCode);
        Assert.Contains("--since must be an ISO 8601 date and time with an offset", usDate.Err, StringComparison.Ordinal);
    }

    /// <summary>A dry run warns, before anything moves, of messages whose job row was swept: moved back, they would run again.</summary>
    [Fact]
    public async Task A_dry_run_move_warns_of_jobs_whose_row_is_gone()
    {
        await Broker.DeadLetterChargeAsync(Declined, "declined",
            extraHeaders: new Dictionary<string, object?> { [JobHeaders.JobId] = Guid.NewGuid().ToString() });
        await Broker.DeadLetterChargeAsync(Declined, "declined");

        var dryRun = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--dry-run");

        Assert.Equal(ExitCodes.Ok, dryRun.ExitCode);
        Assert.Matches(@"Jobs missing\s+1", dryRun.Out);
        Assert.Contains("Warning: 1 job(s) of the selected messages have no row any more", dryRun.Err, StringComparison.Ordinal);
        Assert.Contains("moving their messages back runs those jobs again, with no deduplication.", dryRun.Err, StringComparison.Ordinal);
        Assert.Equal(2u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>
    /// A purge, dry run or not, warns of the same jobs, but not that they would run again: a purge runs nothing again. Their
    /// messages are the last record of them, which it deletes.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_purge_warns_of_jobs_whose_row_is_gone_as_their_last_record_not_as_jobs_that_run_again(bool dryRun)
    {
        await Broker.DeadLetterChargeAsync(Declined, "declined",
            extraHeaders: new Dictionary<string, object?> { [JobHeaders.JobId] = Guid.NewGuid().ToString() });
        await Broker.DeadLetterChargeAsync(Declined, "declined");

        string[] purge = ["purge", ErrorQueueKit.ChargeErrors, "--confirm", ErrorQueueKit.ChargeErrors];
        var run = await RunAsync(dryRun ? [.. purge, "--dry-run"] : purge);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Matches(@"Jobs missing\s+1", run.Out);
        Assert.Contains(
            "Warning: 1 job(s) of the selected messages have no row any more (swept after Retention:JobHours): "
            + "their messages are the last record of those jobs, and a purge deletes them for good (it runs nothing again).",
            run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("moving their messages back", run.Err, StringComparison.Ordinal);
        Assert.Equal(dryRun ? 2u : 0u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>
    /// A value the CLI lets through and the Api refuses is said as the option that gave it, as for <c>conveyor jobs</c>,
    /// not as the Api's field (<c>requestedBy</c>, <c>filter.faultedAfter</c>), which the user never typed.
    /// </summary>
    [Theory]
    [InlineData("messages|charge-payment_error|--limit|501", "--limit: Must be an integer between 1 and 500.", "  limit:")]
    [InlineData("groups|charge-payment_error|--limit|100001", "--limit: Must be an integer between 1 and 100000.", "  limit:")]
    [InlineData("audit|--who|ops\u0001admin", "--who: ", "requestedBy")]
    [InlineData("audit|--limit|501", "--limit: Must be an integer between 1 and 500.", "  limit:")]
    [InlineData("operations|--state|paused", "--state: Must be one of running", "  state:")]
    [InlineData("operations|--queue|a\u0001b", "--queue: ", "  queue:")]
    [InlineData("move|charge-payment_error|--faulted-after|2026-12-01T00:00:00Z|--faulted-before|2026-11-01T00:00:00Z", "--faulted-after: Must be earlier than", "filter.faultedAfter")]
    [InlineData("move|charge-payment_error|--exception-type| |--dry-run", "--exception-type: Must be a non-blank string", "filter.exceptionType")]
    [InlineData("move|charge-payment_error|--target| charge-payment", "--target: Must not begin or end with whitespace", "  target:")]
    [InlineData("purge|charge-payment_error|--confirm|charge-payment_error|--group|not-hex", "--group: Must be a group id", "filter.groupId")]
    [InlineData("purge|charge-payment_error|--confirm|charge-payment_error|--limit|10000001", "--limit: Must be an integer between 1 and", "  limit:")]
    public async Task A_value_the_api_refuses_is_named_as_the_option_that_gave_it(string command, string said, string notSaid)
    {
        await Broker.DeadLetterChargeAsync(Timeout, "timed out");

        var run = await RunAsync(command.Split('|'));

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains(said, run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain(notSaid, run.Err, StringComparison.Ordinal);
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task Move_and_purge_without_waiting_exit_with_still_running_and_say_how_to_follow()
    {
        for (var i = 0; i < 4; i++)
        {
            await Broker.DeadLetterChargeAsync(Timeout, "timed out");
        }

        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--limit", "2", "--no-wait", "--json");
        var moveId = JsonDocument.Parse(move.Out).RootElement.GetProperty("operationId").GetString();
        Assert.Equal(ExitCodes.Ok, (await RunAsync("operation", moveId!, "--wait")).ExitCode);
        var purge = await RunAsync("purge", ErrorQueueKit.ChargeErrors, "--confirm", ErrorQueueKit.ChargeErrors, "--no-wait");

        Assert.Equal(ExitCodes.StillRunning, move.ExitCode);
        Assert.Contains($"Follow it with: conveyor operation {moveId} --wait", move.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.StillRunning, purge.ExitCode);
        Assert.Contains("Started purge ", purge.Out, StringComparison.Ordinal);
        Assert.Contains("Follow it with: conveyor operation ", purge.Err, StringComparison.Ordinal);
        // It goes on without the CLI.
        await Eventually.AssertAsync(async () =>
            Assert.Equal(0, JsonDocument.Parse((await RunAsync("operations", "--state", "running", "--json")).Out).RootElement.GetArrayLength()));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(2u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task A_move_whose_original_queue_does_not_exist_moves_nothing_and_exits_with_failures()
    {
        // Consumed from a queue that has since been deleted: every copy comes back unroutable.
        var gone = new Dictionary<string, object?> { ["MT-Fault-InputAddress"] = "rabbitmq://127.0.0.1/test/charge-payment-retired" };
        for (var i = 0; i < 3; i++)
        {
            await Broker.DeadLetterChargeAsync(Timeout, "timed out", extraHeaders: gone);
        }

        // The dry run says so first: nothing would move, three would fail.
        var dryRun = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--dry-run");
        Assert.True(dryRun.ExitCode == ExitCodes.EndedWithFailures, $"{dryRun.ExitCode}: {dryRun.Err}");
        Assert.Contains("would have moved 0 message(s); 3 would fail", dryRun.Out, StringComparison.Ordinal);

        var json = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--json");
        var table = await RunAsync("move", ErrorQueueKit.ChargeErrors);

        Assert.True(json.ExitCode == ExitCodes.EndedWithFailures, $"{json.ExitCode}: {json.Err}");
        var operation = JsonDocument.Parse(json.Out).RootElement;
        Assert.Equal(("succeeded", true, 0L, 3L), (
            operation.GetProperty("state").GetString(), operation.GetProperty("partial").GetBoolean(),
            operation.GetProperty("moved").GetInt64(), operation.GetProperty("failed").GetInt64()));
        Assert.Equal(ExitCodes.EndedWithFailures, table.ExitCode);
        Assert.Contains("ended with failures", table.Err, StringComparison.Ordinal);
        Assert.Equal(3u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task Move_by_job_id_moves_that_jobs_command_only()
    {
        var job = Guid.NewGuid();
        var wanted = await Broker.DeadLetterChargeAsync(Declined, "declined",
            extraHeaders: new Dictionary<string, object?> { [JobHeaders.JobId] = job.ToString() });
        await Broker.DeadLetterChargeAsync(Declined, "declined",
            extraHeaders: new Dictionary<string, object?> { [JobHeaders.JobId] = Guid.NewGuid().ToString() });

        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--job-id", job.ToString(), "--json");

        Assert.Equal(ExitCodes.Ok, move.ExitCode);
        Assert.Equal(1, JsonDocument.Parse(move.Out).RootElement.GetProperty("moved").GetInt64());
        Assert.Equal([wanted.ToString()], (await Broker.ReadAllAsync(ErrorQueueKit.ChargeQueue)).Select(c => c.MessageId));
        Assert.Equal(ExitCodes.Usage, (await RunAsync("move", ErrorQueueKit.ChargeErrors, "--job-id", "not-a-uuid")).ExitCode);
    }

    /// <summary>
    /// The tables show a type without its namespace, an exception nested in a class as <c>GatewayClient+DeclinedException</c>,
    /// and the filters take "full or short type names". The Api took as the short name only what follows the last <c>+</c>
    /// (<c>DeclinedException</c>), so the name the table showed, pasted into <c>--exception-type</c>, matched nothing: the
    /// move ended "moved 0" with exit 0, and the message stayed in the queue.
    /// </summary>
    [Fact]
    public async Task A_nested_exception_type_as_the_table_shows_it_selects_its_messages()
    {
        var wanted = await Broker.DeadLetterChargeAsync("Conveyor.Worker.Payments.GatewayClient+DeclinedException", "declined");
        var other = await Broker.DeadLetterChargeAsync(Timeout, "timed out");

        var messages = await RunAsync("messages", ErrorQueueKit.ChargeErrors);
        Assert.Equal(ExitCodes.Ok, messages.ExitCode);
        Assert.Contains(" GatewayClient+DeclinedException ", messages.Out, StringComparison.Ordinal);

        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--exception-type", "GatewayClient+DeclinedException", "--json");

        Assert.Equal(ExitCodes.Ok, move.ExitCode);
        Assert.Equal(1, JsonDocument.Parse(move.Out).RootElement.GetProperty("moved").GetInt64());
        Assert.Equal([wanted.ToString()], await Broker.IdsAsync(ErrorQueueKit.ChargeQueue));
        Assert.Equal([other.ToString()], await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task Purge_without_the_confirmation_is_a_usage_error_and_with_it_purges()
    {
        for (var i = 0; i < 4; i++)
        {
            await Broker.DeadLetterChargeAsync(Declined, "declined");
        }

        var refused = await RunAsync("purge", ErrorQueueKit.ChargeErrors);
        Assert.Equal(ExitCodes.Usage, refused.ExitCode);
        Assert.Contains("confirm", refused.Err, StringComparison.Ordinal);
        Assert.Equal(4u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));

        var purged = await RunAsync("purge", ErrorQueueKit.ChargeErrors, "--limit", "3", "--confirm", ErrorQueueKit.ChargeErrors);
        Assert.Equal(ExitCodes.Ok, purged.ExitCode);
        Assert.Contains("purged 3 message(s)", purged.Out, StringComparison.Ordinal);
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task A_misspelt_option_or_an_extra_argument_is_a_usage_error_and_changes_nothing()
    {
        for (var i = 0; i < 3; i++)
        {
            await Broker.DeadLetterChargeAsync(Declined, "declined");
        }

        // Dropping the misspelt filter would purge the whole queue; dropping --dryrun would really move.
        var purge = await RunAsync("purge", ErrorQueueKit.ChargeErrors, "--confirm", ErrorQueueKit.ChargeErrors, "--mesage-id", "x");
        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--dryrun");
        var queues = await RunAsync("queues", "--bogus");
        var extra = await RunAsync("queues", "extra");
        // An option's value left out: the option is not given a placeholder for a value (a queue named
        // "__default_command", a purge by a message id of that name).
        var noTarget = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--target");
        var noId = await RunAsync("purge", ErrorQueueKit.ChargeErrors, "--message-id", "--confirm", ErrorQueueKit.ChargeErrors);
        var noApi = await RunAsync("queues", "--api");

        Assert.Equal((ExitCodes.Usage, ExitCodes.Usage, ExitCodes.Usage, ExitCodes.Usage), (purge.ExitCode, move.ExitCode, queues.ExitCode, extra.ExitCode));
        Assert.Equal((ExitCodes.Usage, ExitCodes.Usage, ExitCodes.Usage), (noTarget.ExitCode, noId.ExitCode, noApi.ExitCode));
        Assert.Contains("--target needs a value (QUEUE)", noTarget.Err, StringComparison.Ordinal);
        Assert.Contains("--message-id needs a value (ID)", noId.Err, StringComparison.Ordinal);
        Assert.Contains("--api needs a value (URL)", noApi.Err, StringComparison.Ordinal);
        Assert.Contains("mesage-id", purge.Err, StringComparison.Ordinal);
        Assert.Contains("dryrun", move.Err, StringComparison.Ordinal);
        Assert.Equal("", queues.Out);
        Assert.Equal(3u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
        // No request was sent: the Api has no operation to show.
        Assert.Equal(0, JsonDocument.Parse((await RunAsync("operations", "--json")).Out).RootElement.GetArrayLength());
    }

    /// <summary>
    /// An option given an empty value, as a script's <c>--limit "$N"</c> with N unset gives it, is refused: read as
    /// no option at all, it would purge the whole queue instead of N messages, or make <c>job --wait</c> exit 0
    /// for a job that has not succeeded.
    /// </summary>
    [Fact]
    public async Task An_option_given_an_empty_value_is_a_usage_error_and_changes_nothing()
    {
        for (var i = 0; i < 3; i++)
        {
            await Broker.DeadLetterChargeAsync(Declined, "declined");
        }

        var purge = await RunAsync("purge", ErrorQueueKit.ChargeErrors, "--limit", "", "--confirm", ErrorQueueKit.ChargeErrors);
        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--limit", "", "--dry-run");
        var job = await RunAsync("job", Guid.NewGuid().ToString(), "--wait", "");

        Assert.Equal((ExitCodes.Usage, ExitCodes.Usage, ExitCodes.Usage), (purge.ExitCode, move.ExitCode, job.ExitCode));
        Assert.Contains("--limit was given an empty value", purge.Err, StringComparison.Ordinal);
        Assert.Contains("--wait was given an empty value", job.Err, StringComparison.Ordinal);
        Assert.Equal(3u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        // No request was sent: the Api has no operation to show.
        Assert.Equal(0, JsonDocument.Parse((await RunAsync("operations", "--json")).Out).RootElement.GetArrayLength());
    }

    /// <summary>
    /// A queue given as an empty argument (<c>conveyor move "$QUEUE" --dry-run</c> with QUEUE unset) was sent as it was:
    /// the Api answered a bare "404 Not Found" for the path with an empty segment, and the CLI ended with 4, "no such
    /// queue", while the same queue given as <c>--queue ""</c> was a usage error naming it, as any empty value is.
    /// </summary>
    [Fact]
    public async Task A_queue_given_as_an_empty_argument_is_a_usage_error_and_nothing_is_sent()
    {
        await Broker.DeadLetterChargeAsync(Declined, "declined");

        var runs = new[]
        {
            await RunAsync("messages", ""),
            await RunAsync("groups", ""),
            await RunAsync("move", "", "--dry-run"),
            await RunAsync("purge", "", "--dry-run"),
        };

        Assert.All(runs, run =>
        {
            Assert.Equal(ExitCodes.Usage, run.ExitCode);
            Assert.Contains("The queue is empty", run.Err, StringComparison.Ordinal);
        });
        Assert.Equal(0, JsonDocument.Parse((await RunAsync("operations", "--json")).Out).RootElement.GetArrayLength());
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task Job_and_jobs_show_a_job_found_by_id_or_by_business_key()
    {
        var paymentId = Guid.NewGuid();
        var accepted = await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));

        var found = await RunAsync("jobs", "--kind", "charge-payment", "--business-key", paymentId.ToString(), "--json");
        Assert.Equal(ExitCodes.Ok, found.ExitCode);
        var item = Assert.Single(JsonDocument.Parse(found.Out).RootElement.GetProperty("items").EnumerateArray());
        Assert.Equal(accepted.JobId, item.GetProperty("jobId").GetGuid());

        // No worker runs here: a short wait ends with the job still queued, which its exit code says.
        var shown = await RunAsync("job", accepted.JobId.ToString(), "--wait", "1");
        Assert.Equal(ExitCodes.StillRunning, shown.ExitCode);
        Assert.Equal(ExitCodes.StillRunning, (await RunAsync("job", accepted.JobId.ToString(), "--wait", "0", "--json")).ExitCode);
        Assert.Equal(ExitCodes.Ok, (await RunAsync("job", accepted.JobId.ToString())).ExitCode);
        Assert.Contains("queued", shown.Out, StringComparison.Ordinal);
        Assert.Contains(paymentId.ToString(), shown.Out, StringComparison.Ordinal);
        Assert.Contains($"It has not started. Cancel it with: conveyor cancel {accepted.JobId}", shown.Out, StringComparison.Ordinal);

        var listed = await RunAsync("jobs", "--status", "queued");
        Assert.Contains(accepted.JobId.ToString(), listed.Out, StringComparison.Ordinal);

        Assert.Equal(ExitCodes.Usage, (await RunAsync("jobs", "--business-key", paymentId.ToString())).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("job", accepted.JobId.ToString(), "--wait", "2592001")).ExitCode);
        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("job", Guid.NewGuid().ToString())).ExitCode);
    }

    [Fact]
    public async Task Result_shows_what_a_succeeded_job_did_and_ends_as_its_wait_did_for_one_that_did_not()
    {
        // No worker runs here: the succeeded jobs and the records of their effects are written as a worker writes them.
        var reportId = Guid.NewGuid();
        var paymentId = Guid.NewGuid();
        var report = SucceededJob(JobKinds.GenerateReport, reportId);
        var charge = SucceededJob(JobKinds.ChargePayment, paymentId);
        const string Huge = "123456789012345678901234567";
        await using (var db = Fixture.CreateDbContext())
        {
            db.Jobs.AddRange(report, charge);
            db.Reports.Add(new Conveyor.Storage.Reports.Report
            {
                ReportId = reportId,
                Currency = null,
                AccountId = "acct-cli",
                RowsScanned = 7,
                Totals = $$"""[{"currency":"EUR","count":5,"totalMinor":{{Huge}}},{"currency":"USD","count":2,"totalMinor":300}]""",
                CompletedAt = DateTimeOffset.UtcNow,
            });
            db.Ledger.Add(new Conveyor.Storage.Payments.LedgerEntry
            {
                PaymentId = paymentId,
                AccountId = "acct-cli",
                AmountMinor = 4200,
                Currency = "EUR",
                GatewayChargeId = "ch_cli_0042",
                ChargedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        var table = await RunAsync("result", report.Id.ToString());
        Assert.True(table.ExitCode == ExitCodes.Ok, table.Err);
        Assert.Contains(reportId.ToString(), table.Out, StringComparison.Ordinal);
        Assert.Contains(Huge, table.Out, StringComparison.Ordinal);
        Assert.Matches(@"Currency\s+all", table.Out);
        Assert.Matches(@"Rows scanned\s+7", table.Out);
        Assert.Matches(@"USD\s.*\s2\s.*\s300", table.Out);

        var json = await RunAsync("result", report.Id.ToString(), "--json");
        Assert.True(json.ExitCode == ExitCodes.Ok, json.Err);
        var totals = JsonDocument.Parse(json.Out).RootElement.GetProperty("report").GetProperty("totals");
        Assert.Equal(Huge, totals[0].GetProperty("totalMinor").GetRawText());

        var charged = await RunAsync("result", charge.Id.ToString(), "--wait", "1");
        Assert.True(charged.ExitCode == ExitCodes.Ok, charged.Err);
        Assert.Contains("ch_cli_0042", charged.Out, StringComparison.Ordinal);
        Assert.Matches(@"Amount \(minor units\)\s+4200", charged.Out);

        // A job that has not run: the Api's 409 at once; waited for, still running (7), with nothing on stdout.
        var queued = await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        var refused = await RunAsync("result", queued.JobId.ToString());
        Assert.Equal(ExitCodes.NotFoundOrConflict, refused.ExitCode);
        Assert.Contains("409 Job has no result", refused.Err, StringComparison.Ordinal);
        Assert.Contains("is queued", refused.Err, StringComparison.Ordinal);
        var waited = await RunAsync("result", queued.JobId.ToString(), "--wait", "1", "--json");
        Assert.Equal((ExitCodes.StillRunning, ""), (waited.ExitCode, waited.Out));
        Assert.Contains("is still queued after 1 s", waited.Err, StringComparison.Ordinal);

        await using (var db = Fixture.CreateDbContext())
        {
            await db.Jobs.Where(j => j.Id == queued.JobId).ExecuteUpdateAsync(set => set.SetProperty(j => j.Status, Conveyor.Storage.Jobs.JobStatus.DeadLettered));
        }

        var failed = await RunAsync("result", queued.JobId.ToString(), "--wait", "1", "--json");
        Assert.Equal((ExitCodes.OperationFailed, ""), (failed.ExitCode, failed.Out));
        Assert.Contains($"is dead-lettered: only a succeeded job has a result. See why with: conveyor job {queued.JobId}", failed.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("result", Guid.NewGuid().ToString())).ExitCode);
    }

    private static Conveyor.Storage.Jobs.Job SucceededJob(string kind, Guid businessId) => new()
    {
        Id = Guid.NewGuid(),
        Kind = kind,
        BusinessKey = businessId.ToString(),
        Status = Conveyor.Storage.Jobs.JobStatus.Succeeded,
        Attempts = 1,
        CreatedAt = DateTimeOffset.UtcNow,
        UpdatedAt = DateTimeOffset.UtcNow,
        FinishedAt = DateTimeOffset.UtcNow,
    };

    [Fact]
    public async Task Cancel_cancels_a_job_that_has_not_started_does_so_again_harmlessly_and_refuses_one_that_has_ended()
    {
        // No worker runs here: the jobs stay queued until cancelled.
        var waiting = await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        var ended = await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        await using (var db = Fixture.CreateDbContext())
        {
            await db.Jobs.Where(j => j.Id == ended.JobId).ExecuteUpdateAsync(set => set.SetProperty(j => j.Status, Conveyor.Storage.Jobs.JobStatus.Succeeded));
        }

        var cancelled = await RunAsync("cancel", waiting.JobId.ToString());

        Assert.True(cancelled.ExitCode == ExitCodes.Ok, cancelled.Err);
        Assert.Contains($"Job {waiting.JobId} is cancelled: it will not run.", cancelled.Out, StringComparison.Ordinal);
        Assert.Equal(Conveyor.Storage.Jobs.JobStatus.Cancelled, await StatusOfAsync(waiting.JobId));

        // Sent again (a script run twice, an answer lost on the way): answered as the cancel it was.
        var again = await RunAsync("cancel", waiting.JobId.ToString(), "--json");
        Assert.True(again.ExitCode == ExitCodes.Ok, again.Err);
        Assert.Equal("cancelled", JsonDocument.Parse(again.Out).RootElement.GetProperty("status").GetString());

        var refused = await RunAsync("cancel", ended.JobId.ToString());
        Assert.Equal(ExitCodes.NotFoundOrConflict, refused.ExitCode);
        Assert.Contains("only queued or scheduled jobs can be cancelled", refused.Err, StringComparison.Ordinal);
        Assert.Equal("", refused.Out);
        Assert.Equal(Conveyor.Storage.Jobs.JobStatus.Succeeded, await StatusOfAsync(ended.JobId));

        // Queued again after a worker's shutdown cut its attempt short: it has started, so neither a hint nor a cancel.
        var cutShort = await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        await using (var db = Fixture.CreateDbContext())
        {
            await db.Jobs.Where(j => j.Id == cutShort.JobId)
                .ExecuteUpdateAsync(set => set.SetProperty(j => j.Attempts, 1).SetProperty(j => j.LastError, "The worker stopped during the attempt"));
        }

        var shown = await RunAsync("job", cutShort.JobId.ToString());
        Assert.Equal(ExitCodes.Ok, shown.ExitCode);
        Assert.DoesNotContain("conveyor cancel", shown.Out, StringComparison.Ordinal);
        var tooLate = await RunAsync("cancel", cutShort.JobId.ToString());
        Assert.Equal(ExitCodes.NotFoundOrConflict, tooLate.ExitCode);
        Assert.Contains("queued again after an attempt that was cut short", tooLate.Err, StringComparison.Ordinal);
        Assert.Equal(Conveyor.Storage.Jobs.JobStatus.Queued, await StatusOfAsync(cutShort.JobId));

        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("cancel", Guid.NewGuid().ToString())).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("cancel", "not-a-job")).ExitCode);
        Assert.Equal(ExitCodes.Auth, (await RunAsync(["cancel", Guid.NewGuid().ToString()], "dev-not-a-key-of-this-api")).ExitCode);
    }

    [Fact]
    public async Task Run_now_makes_a_scheduled_job_due_now_again_harmlessly_and_refuses_a_queued_one()
    {
        // No worker runs here: the stored command stays, due now, where a dispatcher would publish it at once.
        var scheduled = await App.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));
        var hinted = await RunAsync("job", scheduled.JobId.ToString());
        Assert.Contains($"or run it now: conveyor run-now {scheduled.JobId}", hinted.Out, StringComparison.Ordinal);

        var run = await RunAsync("run-now", scheduled.JobId.ToString());

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        Assert.Contains($"Job {scheduled.JobId} is due now", run.Out, StringComparison.Ordinal);
        await using (var db = Fixture.CreateDbContext())
        {
            var stored = await db.ScheduledMessages.AsNoTracking().SingleAsync(m => m.JobId == scheduled.JobId);
            Assert.True(stored.DueAt < DateTimeOffset.UtcNow.AddMinutes(1), $"due at {stored.DueAt:O}");
        }

        // Sent again (a script run twice): still due now, the same job.
        var again = await RunAsync("run-now", scheduled.JobId.ToString(), "--json");
        Assert.True(again.ExitCode == ExitCodes.Ok, again.Err);
        var job = JsonDocument.Parse(again.Out).RootElement;
        Assert.Equal(scheduled.JobId, job.GetProperty("jobId").GetGuid());
        Assert.Equal("scheduled", job.GetProperty("status").GetString());

        var queued = await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        var refused = await RunAsync("run-now", queued.JobId.ToString());
        Assert.Equal(ExitCodes.NotFoundOrConflict, refused.ExitCode);
        Assert.Contains($"Job {queued.JobId} is queued", refused.Err, StringComparison.Ordinal);
        Assert.Equal("", refused.Out);

        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("run-now", Guid.NewGuid().ToString())).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("run-now", "not-a-job")).ExitCode);
        Assert.Equal(ExitCodes.Auth, (await RunAsync(["run-now", Guid.NewGuid().ToString()], "dev-not-a-key-of-this-api")).ExitCode);
    }

    [Fact]
    public async Task Run_now_with_a_kind_releases_up_to_its_limit_and_says_how_to_release_the_rest()
    {
        // No worker runs here: the stored commands stay, due now, where a dispatcher would publish them at once.
        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        var jobs = new List<Guid>();
        for (var i = 0; i < 2; i++)
        {
            jobs.Add((await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt))).JobId);
        }

        var first = await RunAsync("run-now", "--kind", JobKinds.ChargePayment, "--status", "scheduled", "--limit", "1");

        Assert.True(first.ExitCode == ExitCodes.Ok, first.Err);
        Assert.Contains("1 charge-payment job(s) scheduled made due now", first.Out, StringComparison.Ordinal);
        Assert.Contains("1 still wait for their time. Run it again to release them: conveyor run-now --kind charge-payment --status scheduled", first.Out, StringComparison.Ordinal);

        var second = await RunAsync("run-now", "--kind", JobKinds.ChargePayment, "--status", "scheduled", "--json");
        Assert.True(second.ExitCode == ExitCodes.Ok, second.Err);
        var summary = JsonDocument.Parse(second.Out).RootElement;
        Assert.Equal(1, summary.GetProperty("released").GetInt32());
        Assert.Equal(0, summary.GetProperty("stillWaiting").GetInt32());
        await using (var db = Fixture.CreateDbContext())
        {
            var due = await db.ScheduledMessages.AsNoTracking().Where(m => m.JobId != null && jobs.Contains(m.JobId.Value)).Select(m => m.DueAt).ToListAsync();
            Assert.Equal(2, due.Count);
            Assert.All(due, at => Assert.True(at < DateTimeOffset.UtcNow.AddMinutes(1), $"due at {at:O}"));
        }

        // The retries by default: none wait here.
        var retries = await RunAsync("run-now", "--kind", JobKinds.ChargePayment);
        Assert.True(retries.ExitCode == ExitCodes.Ok, retries.Err);
        Assert.Contains("No charge-payment job is retry-scheduled with its time ahead: none was made due now.", retries.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("still wait", retries.Out, StringComparison.Ordinal);

        Assert.Equal(ExitCodes.Usage, (await RunAsync("run-now")).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("run-now", jobs[0].ToString(), "--kind", JobKinds.ChargePayment)).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("run-now", jobs[0].ToString(), "--limit", "5")).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("run-now", "--kind", JobKinds.ChargePayment, "--status", "queued")).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("run-now", "--kind", JobKinds.ChargePayment, "--limit", "0")).ExitCode);
        var unknown = await RunAsync("run-now", "--kind", "charge-payments");
        Assert.Equal(ExitCodes.Usage, unknown.ExitCode);
        Assert.Contains("kind", unknown.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// A run-now of a kind releases up to its limit each time the Api acts on it: a gateway's 504 in front of an Api that
    /// did (the gateway stopped waiting) is not followed by the request again, which would release up to as many more and
    /// show only the second count. It ends with 5, saying that the Api may have made jobs due now.
    /// </summary>
    [Fact]
    public async Task Run_now_with_a_kind_is_not_sent_again_after_a_gateway_timeout_that_followed_it()
    {
        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        var jobs = new List<Guid>();
        for (var i = 0; i < 2; i++)
        {
            jobs.Add((await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt))).JobId);
        }

        using var gateway = new TimingOutOnce(new SocketsHttpHandler());
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var exitCode = await CliApp.RunAsync(
            ["run-now", "--kind", JobKinds.ChargePayment, "--status", "scheduled", "--limit", "1", "--api", App.BaseAddress.ToString()],
            stdout, stderr, gateway, new Dictionary<string, string?> { [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey });

        Assert.True(exitCode == ExitCodes.Unreachable, stderr.ToString());
        Assert.Equal(1, gateway.Requests);
        Assert.Equal("", stdout.ToString());
        Assert.Contains("may have made up to 1 charge-payment job(s) due now", stderr.ToString(), StringComparison.Ordinal);
        await using var db = Fixture.CreateDbContext();
        var due = await db.ScheduledMessages.AsNoTracking().Where(m => m.JobId != null && jobs.Contains(m.JobId.Value)).Select(m => m.DueAt).ToListAsync();
        Assert.Equal(2, due.Count);
        Assert.Single(due, at => at < DateTimeOffset.UtcNow.AddMinutes(1));
    }

    /// <summary>
    /// A cancel that finds the job's row held (a worker claiming it, the scheduler publishing it) is answered 409 with
    /// Retry-After, and nothing changed: the CLI sends it again, and once the row is free the job is cancelled.
    /// </summary>
    [Fact]
    public async Task Cancel_of_a_job_whose_row_is_held_for_a_moment_is_sent_again_and_cancels_it()
    {
        var accepted = await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        var stderr = new SharedText();
        using var stdout = new StringWriter();
        Task<int> cancel;
        await using (var db = Fixture.CreateDbContext())
        {
            await using var holding = await db.Database.BeginTransactionAsync();
            await db.Database.ExecuteSqlAsync($"SELECT 1 FROM jobs WHERE id = {accepted.JobId} FOR UPDATE");

            cancel = StartAsync(["cancel", accepted.JobId.ToString()], ErrorQueueKit.AdminKey, stdout, stderr.Writer);
            await Eventually.AssertAsync(() =>
            {
                Assert.Contains($"Could not cancel job {accepted.JobId} (409 Job busy", stderr.ToString(), StringComparison.Ordinal);
                return Task.CompletedTask;
            });
            Assert.False(cancel.IsCompleted);
            Assert.Equal(Conveyor.Storage.Jobs.JobStatus.Queued, await StatusOfAsync(accepted.JobId));
            await holding.RollbackAsync();
        }

        Assert.True(await cancel == ExitCodes.Ok, stderr.ToString());
        Assert.Contains($"Job {accepted.JobId} is cancelled", stdout.ToString(), StringComparison.Ordinal);
        Assert.Equal(Conveyor.Storage.Jobs.JobStatus.Cancelled, await StatusOfAsync(accepted.JobId));
    }

    private async Task<string> StatusOfAsync(Guid jobId)
    {
        await using var db = Fixture.CreateDbContext();
        return await db.Jobs.Where(j => j.Id == jobId).Select(j => j.Status).SingleAsync();
    }

    [Fact]
    public async Task Job_says_how_to_move_a_dead_lettered_job_back()
    {
        var job = new Conveyor.Storage.Jobs.Job
        {
            Id = Guid.CreateVersion7(),
            Kind = JobKinds.ChargePayment,
            BusinessKey = Guid.NewGuid().ToString(),
            Status = Conveyor.Storage.Jobs.JobStatus.DeadLettered,
            Attempts = 3,
            LastError = "The payment gateway answered 400",
            CreatedAt = DateTimeOffset.UtcNow,
            UpdatedAt = DateTimeOffset.UtcNow,
        };
        await using (var db = Fixture.CreateDbContext())
        {
            db.Jobs.Add(job);
            await db.SaveChangesAsync();
        }

        var shown = await RunAsync("job", job.Id.ToString());

        Assert.Equal(ExitCodes.Ok, shown.ExitCode);
        Assert.Contains($"conveyor move charge-payment_error --job-id {job.Id}", shown.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("conveyor cancel", shown.Out, StringComparison.Ordinal);
        // Waited for, a job that ended dead-lettered is a failure to a script, one that succeeded is not.
        Assert.Equal(ExitCodes.OperationFailed, (await RunAsync("job", job.Id.ToString(), "--wait", "1")).ExitCode);
        await using (var db = Fixture.CreateDbContext())
        {
            await db.Jobs.Where(j => j.Id == job.Id).ExecuteUpdateAsync(set => set.SetProperty(j => j.Status, Conveyor.Storage.Jobs.JobStatus.Succeeded));
        }

        var succeeded = await RunAsync("job", job.Id.ToString(), "--wait", "1");
        Assert.Equal(ExitCodes.Ok, succeeded.ExitCode);
        Assert.Contains($"See what it did with: conveyor result {job.Id}", succeeded.Out, StringComparison.Ordinal);
    }

    /// <summary>
    /// A queue whose name begins with <c>-</c> (RabbitMQ allows it). The CLI's parser reads any word beginning with <c>-</c> as
    /// options and takes no argument after a <c>--</c>, so the commands the CLI printed for it (<c>conveyor move -weird_error
    /// --job-id …</c>, <c>conveyor operations --queue -weird_error …</c>) ended with 2 when pasted back ("Short option does
    /// not have a valid name"), and no command could name such a queue at all. A queue may now be given as
    /// <c>--queue=NAME</c>, and the commands printed name it so: run back through the CLI as a shell would split them, they
    /// work against the Api.
    /// </summary>
    [Fact]
    public async Task A_queue_whose_name_begins_with_a_dash_is_named_in_printed_commands_so_that_they_run_back()
    {
        var source = $"-weird{Guid.NewGuid():N}"[..12];
        var errors = source + "_error";
        await Broker.DeclareAsync(source);
        await Broker.DeclareAsync(errors);
        try
        {
            var job = Guid.NewGuid();
            var message = await Broker.DeadLetterChargeAsync(Declined, "declined", queue: errors, extraHeaders: new Dictionary<string, object?>
            {
                [JobHeaders.JobId] = job.ToString(),
                ["MT-Fault-InputAddress"] = $"rabbitmq://127.0.0.1/test/{source}",
            });

            // Pasted as an argument, the name is an option: refused, saying how to give it.
            var asArgument = await RunAsync("messages", errors);
            Assert.Equal(ExitCodes.Usage, asArgument.ExitCode);
            Assert.Contains($"give a queue named so as --queue={errors}", asArgument.Err, StringComparison.Ordinal);
            var listed = await RunAsync("messages", $"--queue={errors}");
            Assert.True(listed.ExitCode == ExitCodes.Ok, listed.Err);
            Assert.Contains(message.ToString(), listed.Out, StringComparison.Ordinal);

            // A gateway's 504 to the start of a move: the command printed to look for it runs.
            var cutOff = await RunWithAnswerAsync(["move", $"--queue={errors}"], System.Net.HttpStatusCode.GatewayTimeout, "text/html", "<html>Gateway Timeout</html>");
            Assert.Equal(ExitCodes.StartUnknown, cutOff.ExitCode);
            var look = await RunAsync(PrintedCommand(cutOff.Err, "Look before starting it again: "));
            Assert.True(look.ExitCode == ExitCodes.Ok, look.Err);

            // The job's kind names the queue (here an Api's answer with a kind beginning with '-'): its move runs and moves it.
            var shown = await RunWithAnswerAsync(["job", job.ToString()], System.Net.HttpStatusCode.OK, "application/json",
                $$"""{"jobId":"{{job}}","kind":"{{source}}","status":"dead-lettered"}""");
            Assert.Equal(ExitCodes.Ok, shown.ExitCode);
            var move = await RunAsync(PrintedCommand(shown.Out, "Move it back with: "));
            Assert.True(move.ExitCode == ExitCodes.Ok, move.Err);
            Assert.Equal(0u, await Broker.CountAsync(errors));
            Assert.Equal([message.ToString()], await Broker.IdsAsync(source));
        }
        finally
        {
            await Broker.DeleteAsync(errors);
            await Broker.DeleteAsync(source);
        }
    }

    /// <summary>
    /// A line that is not valid UTF-8 (a file saved in Latin-1, a byte cut out) is refused before its batch is sent, saying
    /// so. Its bytes were decoded as U+FFFD and sent: here the Api refused an accountId holding a character the file never
    /// held (<c>acct-4\uFFFD</c>), and a field that takes any text would have been submitted with it.
    /// </summary>
    /// <summary>A directory given for the file of jobs is said to be one: .NET's words were "Access to the path … is denied".</summary>
    [Fact]
    public async Task Submit_of_a_directory_says_it_is_a_directory_and_sends_nothing()
    {
        var directory = Directory.CreateTempSubdirectory("conveyor-cli-").FullName;
        try
        {
            var run = await RunWithAnswerAsync(["submit", "charge-payment", directory], System.Net.HttpStatusCode.InternalServerError, "text/plain", "nothing may be sent");

            Assert.Equal(ExitCodes.Usage, run.ExitCode);
            Assert.Contains($"Cannot read {directory}: it is a directory; give a file of jobs", run.Err, StringComparison.Ordinal);
            Assert.DoesNotContain("denied", run.Err, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(directory);
        }
    }

    [Fact]
    public async Task Submit_refuses_a_line_that_is_not_valid_utf8_and_submits_nothing_of_it()
    {
        var paymentId = Guid.NewGuid();
        var path = Path.Combine(Path.GetTempPath(), $"conveyor-cli-{Guid.NewGuid():N}.jsonl");
        var bytes = System.Text.Encoding.UTF8.GetBytes(JobRequests.ChargePayment(paymentId).Replace("acct-42", "acct-4\u0001", StringComparison.Ordinal) + "\n");
        bytes[Array.IndexOf(bytes, (byte)1)] = 0xFF;
        await File.WriteAllBytesAsync(path, bytes);
        try
        {
            var run = await RunAsync("submit", "charge-payment", path);

            Assert.Equal(ExitCodes.Usage, run.ExitCode);
            Assert.Contains("is not valid UTF-8", run.Err, StringComparison.Ordinal);
            await using var db = Fixture.CreateDbContext();
            Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == paymentId.ToString("D")));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Submit_sends_a_file_of_jobs_in_batches_and_run_again_submits_nothing_twice()
    {
        var paymentIds = Enumerable.Range(0, 5).Select(_ => Guid.NewGuid()).ToList();
        // JSON lines, with a blank line: the sources are the lines' numbers.
        var lines = paymentIds.Select(id => JobRequests.ChargePayment(id)).ToList();
        lines.Insert(2, "");
        using var file = new TempFile(string.Join("\n", lines) + "\n");

        var first = await RunAsync("submit", "charge-payment", file.Path, "--batch-size", "2", "--json");
        var again = await RunAsync("submit", "charge-payment", file.Path);

        Assert.True(first.ExitCode == ExitCodes.Ok, first.Err);
        var jobs = JsonDocument.Parse(first.Out).RootElement.EnumerateArray().ToList();
        Assert.Equal(["line 1", "line 2", "line 4", "line 5", "line 6"], jobs.Select(j => j.GetProperty("source").GetString()));
        Assert.Contains("5 jobs accepted so far", first.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Ok, again.ExitCode);
        Assert.Contains("5 charge-payment jobs accepted in 1 request.", again.Out, StringComparison.Ordinal);
        await using var db = Fixture.CreateDbContext();
        var rows = await db.Jobs.AsNoTracking().ToDictionaryAsync(j => j.BusinessKey, j => j.Id);
        Assert.Equal(5, rows.Count);
        for (var i = 0; i < paymentIds.Count; i++)
        {
            Assert.Equal(rows[paymentIds[i].ToString("D")], jobs[i].GetProperty("jobId").GetGuid());
            Assert.Contains(rows[paymentIds[i].ToString("D")].ToString(), again.Out, StringComparison.Ordinal);
        }
    }

    /// <summary>A batch the Api accepted in part (ADR 0009): the message names the jobs it accepted, not only the refused ones.</summary>
    [Fact]
    public async Task Submit_of_a_batch_accepted_in_part_says_which_jobs_were_accepted()
    {
        var (fresh, reused) = (Guid.NewGuid(), Guid.NewGuid());
        await App.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(reused, amountMinor: 100));
        // The same business id with another amount is refused (422); the fresh job beside it is accepted.
        using var file = new TempFile(JobRequests.ChargePayment(fresh) + "\n" + JobRequests.ChargePayment(reused, amountMinor: 999));

        var run = await RunAsync("submit", "charge-payment", file.Path);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        await using var db = Fixture.CreateDbContext();
        var freshJob = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == fresh.ToString("D"));
        Assert.Contains("line 2: 422", run.Err, StringComparison.Ordinal);
        Assert.Contains($"Accepted from this batch (1 of 2): line 1 (job {freshJob.Id})", run.Err, StringComparison.Ordinal);
    }

    /// <summary>
    /// A time without an offset is local time in ISO 8601, which the Api cannot know; a culture's format is
    /// ambiguous. The CLI refuses both before sending, and the Api answers 400 naming the field.
    /// </summary>
    [Fact]
    public async Task A_time_without_an_offset_or_in_a_cultures_format_is_refused_by_the_cli_and_by_the_api()
    {
        await Broker.DeadLetterChargeAsync(Timeout, "timed out");

        var since = await RunAsync("audit", "--since", "2026-11-28T09:00");
        var move = await RunAsync("move", ErrorQueueKit.ChargeErrors, "--faulted-before", "12/01/2026 06:00 GMT");
        using var audit = await Admin.GetAsync(new Uri("/api/audit?since=2026-11-28T09:00", UriKind.Relative));
        using var purge = await Admin.PostAsJsonAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/purge", UriKind.Relative),
            new { filter = new { faultedBefore = "12/01/2026 06:00 GMT" }, confirm = ErrorQueueKit.ChargeErrors });

        Assert.Equal(ExitCodes.Usage, since.ExitCode);
        Assert.Contains("--since must be an ISO 8601 date and time with an offset", since.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Usage, move.ExitCode);
        Assert.Contains("--faulted-before must be an ISO 8601 date and time with an offset", move.Err, StringComparison.Ordinal);
        Assert.Equal(System.Net.HttpStatusCode.BadRequest, audit.StatusCode);
        Assert.Contains("with an offset", (await audit.Content.ReadAsStringAsync()), StringComparison.Ordinal);
        Assert.Equal(["since"], await audit.ErrorFieldsAsync());
        Assert.Equal(["filter.faultedBefore"], await purge.ErrorFieldsAsync());
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task Submit_reads_a_json_array_and_names_the_place_of_each_bad_job()
    {
        using var array = new TempFile($"[{JobRequests.ChargePayment(Guid.NewGuid())},{JobRequests.ChargePayment(Guid.NewGuid(), amountMinor: 0)}]");
        using var notJson = new TempFile(JobRequests.ChargePayment(Guid.NewGuid()) + "\n{\"paymentId\":\n");
        using var notObject = new TempFile("[1]");

        var refused = await RunAsync("submit", "charge-payment", array.Path);
        var broken = await RunAsync("submit", "charge-payment", notJson.Path);
        var numbers = await RunAsync("submit", "charge-payment", notObject.Path);
        var missing = await RunAsync("submit", "charge-payment", array.Path + ".missing");
        var unnamed = await RunAsync("submit", "charge-payment", "");

        Assert.Equal(ExitCodes.Usage, refused.ExitCode);
        Assert.Contains("item 2: amountMinor:", refused.Err, StringComparison.Ordinal);
        Assert.Contains("No job was accepted before this batch.", refused.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Usage, broken.ExitCode);
        Assert.Contains("line 2 is not valid JSON", broken.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Usage, numbers.ExitCode);
        Assert.Contains("item 1: a job must be a JSON object", numbers.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Usage, missing.ExitCode);
        Assert.Equal((ExitCodes.Usage, "conveyor: The file name is empty."), (unnamed.ExitCode, unnamed.Err.Trim()));
        Assert.Equal(ExitCodes.Usage, (await RunAsync("submit", "charge-payment", array.Path, "--batch-size", "101")).ExitCode);
        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("submit", "mine-bitcoin", array.Path)).ExitCode);
        await using var db = Fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task Submit_sends_a_json_array_in_batches_naming_each_job_by_its_item()
    {
        var paymentIds = Enumerable.Range(0, 3).Select(_ => Guid.NewGuid()).ToList();
        // A byte order mark and blank lines before the array, as editors write them.
        using var file = new TempFile("\uFEFF\n  [\n" + string.Join(",\n", paymentIds.Select(id => JobRequests.ChargePayment(id))) + "\n]\n");

        var run = await RunAsync("submit", "charge-payment", file.Path, "--batch-size", "2", "--json");

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        var jobs = JsonDocument.Parse(run.Out).RootElement.EnumerateArray().ToList();
        Assert.Equal(["item 1", "item 2", "item 3"], jobs.Select(j => j.GetProperty("source").GetString()));
        Assert.Contains("2 jobs accepted so far", run.Err, StringComparison.Ordinal);
        await using var db = Fixture.CreateDbContext();
        Assert.Equal(3, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task Submit_lists_the_first_fifty_jobs_in_its_table_and_counts_the_rest()
    {
        using var file = new TempFile(string.Join("\n", Enumerable.Range(0, 60).Select(_ => JobRequests.ChargePayment(Guid.NewGuid()))));

        var run = await RunAsync("submit", "charge-payment", file.Path);

        Assert.Equal(ExitCodes.Ok, run.ExitCode);
        Assert.Contains("│ line 50 ", run.Out, StringComparison.Ordinal);
        Assert.DoesNotContain("│ line 51 ", run.Out, StringComparison.Ordinal);
        Assert.Contains("… and 10 more (--json lists every job).", run.Out, StringComparison.Ordinal);
        Assert.Contains("60 charge-payment jobs accepted in 1 request.", run.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Submit_streams_json_lines_and_a_bad_line_after_sent_batches_says_how_far_the_file_got()
    {
        var lines = Enumerable.Range(0, 4).Select(_ => JobRequests.ChargePayment(Guid.NewGuid())).ToList();
        lines.Insert(2, "{\"paymentId\":");
        using var file = new TempFile(string.Join("\n", lines));

        var run = await RunAsync("submit", "charge-payment", file.Path, "--batch-size", "2");

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains("line 3 is not valid JSON", run.Err, StringComparison.Ordinal);
        Assert.Contains("The 2 jobs before it were accepted.", run.Err, StringComparison.Ordinal);
        await using var db = Fixture.CreateDbContext();
        Assert.Equal(2, await db.Jobs.CountAsync());
    }

    /// <summary>
    /// A job that gives a field twice. The Api parses a batch whole and refuses such a body as invalid JSON
    /// (which value counts would be a guess), which names no job: the CLI finds it first, names its line and
    /// field, and sends nothing of its batch.
    /// </summary>
    [Fact]
    public async Task Submit_names_the_line_and_field_of_a_job_that_gives_a_field_twice_and_sends_nothing_of_its_batch()
    {
        var lines = Enumerable.Range(0, 4).Select(_ => JobRequests.ChargePayment(Guid.NewGuid())).ToList();
        lines[2] = lines[2][..^1] + $",\"paymentId\":\"{Guid.NewGuid()}\"}}";
        using var file = new TempFile(string.Join("\n", lines));

        var run = await RunAsync("submit", "charge-payment", file.Path, "--batch-size", "2");

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains("line 3: paymentId: Is given more than once.", run.Err, StringComparison.Ordinal);
        Assert.Contains("The 2 jobs before it were accepted.", run.Err, StringComparison.Ordinal);
        await using var db = Fixture.CreateDbContext();
        Assert.Equal(2, await db.Jobs.CountAsync());
    }

    /// <summary>
    /// In a JSON array the job is named by its item, and a field given twice inside a value (a webhook's payload)
    /// by its path, since the Api refuses that as well; a name the CLI cannot read to compare (a lone surrogate
    /// escape) is named too, not taken for a strange answer of the Api.
    /// </summary>
    [Fact]
    public async Task Submit_names_the_item_and_path_of_a_field_given_twice_inside_a_job_of_an_array()
    {
        var twice = JobRequests.DeliverWebhook(Guid.NewGuid()).Replace("\"orderId\":7", "\"orderId\":7,\"orderId\":8", StringComparison.Ordinal);
        using var array = new TempFile($"[\n{JobRequests.DeliverWebhook(Guid.NewGuid())},\n{twice}\n]");
        using var unreadable = new TempFile(JobRequests.DeliverWebhook(Guid.NewGuid()).Replace("\"paid\"", "\"\\ud800\"", StringComparison.Ordinal));

        var run = await RunAsync("submit", "deliver-webhook", array.Path);
        var broken = await RunAsync("submit", "deliver-webhook", unreadable.Path);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains("item 2: payload.orderId: Is given more than once.", run.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Usage, broken.ExitCode);
        Assert.Contains("line 1: payload: a field name in it is not valid Unicode text", broken.Err, StringComparison.Ordinal);
        await using var db = Fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task Submit_waits_as_told_when_the_rate_limit_refuses_a_batch_and_sends_it_again()
    {
        var settings = ErrorQueueKit.ApiSettings();
        settings["RateLimiting:PermitsPerSecond"] = "1";
        settings["RateLimiting:Burst"] = "2";
        await using var limited = await Fixture.StartApiAsync(settings);
        using var file = new TempFile(string.Join("\n", Enumerable.Range(0, 4).Select(_ => JobRequests.ChargePayment(Guid.NewGuid()))));

        var run = await RunAsync("submit", "charge-payment", file.Path, "--batch-size", "2", "--api", limited.BaseAddress.ToString());

        Assert.True(run.ExitCode == ExitCodes.Ok, run.Err);
        Assert.Contains("The Api answered 429 for line 3 to line 4; sending them again", run.Err, StringComparison.Ordinal);
        await using var db = Fixture.CreateDbContext();
        Assert.Equal(4, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task An_unknown_key_from_a_locked_out_address_is_an_auth_failure_that_submit_does_not_send_again()
    {
        var settings = ErrorQueueKit.ApiSettings();
        settings["Auth:Throttling:ApiKeys:MaxFailures"] = "1";
        settings["Auth:Throttling:ApiKeys:Lockout"] = "00:05:00";
        await using var api = await Fixture.StartApiAsync(settings);
        var address = api.BaseAddress.ToString();
        const string unknownKey = "not-a-configured-key-111111111111";
        using var file = new TempFile(JobRequests.ChargePayment(Guid.NewGuid()));

        var first = await RunAsync(["queues", "--api", address], unknownKey);
        var locked = await RunAsync(["queues", "--api", address], unknownKey);
        var submit = await RunAsync(["submit", "charge-payment", file.Path, "--api", address], unknownKey);

        Assert.Equal(ExitCodes.Auth, first.ExitCode);
        Assert.Contains("401", first.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Auth, locked.ExitCode);
        Assert.Contains("429 Too many unknown API keys", locked.Err, StringComparison.Ordinal);
        Assert.Contains($"Check {CliContext.ApiKeyVariable}.", locked.Err, StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Auth, submit.ExitCode);
        Assert.DoesNotContain("sending them again", submit.Err, StringComparison.Ordinal);
        // The Api's own key still works from the locked-out address, and the CLI's other 429 is still sent again
        // (Submit_waits_as_told_when_the_rate_limit_refuses_a_batch_and_sends_it_again).
        Assert.Equal(ExitCodes.Ok, (await RunAsync(["queues", "--api", address], ErrorQueueKit.AdminKey)).ExitCode);
        await using var db = Fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task Exit_codes_tell_usage_auth_not_found_and_unreachable_apart()
    {
        Assert.Equal(ExitCodes.Usage, (await RunAsync("move")).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("frobnicate")).ExitCode);
        Assert.Equal(ExitCodes.Usage, (await RunAsync("move", ErrorQueueKit.ChargeErrors, "--limit", "0")).ExitCode);
        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("messages", "no-such-queue_error")).ExitCode);
        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("operation", Guid.NewGuid().ToString())).ExitCode);
        Assert.Equal(ExitCodes.Auth, (await RunAsync(["queues"], key: "not-a-configured-key-000000000000")).ExitCode);
        Assert.Equal(ExitCodes.Auth, (await RunAsync(["queues"], key: ErrorQueueKit.ReaderKey)).ExitCode);
        Assert.Equal(ExitCodes.Auth, (await RunAsync(["queues"], key: null)).ExitCode);
        // The Api's 404 for a path it does not know is a problem document too, so not taken for another server's page.
        Assert.Equal(ExitCodes.NotFoundOrConflict, (await RunAsync("queues", "--api", new Uri(App.BaseAddress, "no-such-prefix/").ToString())).ExitCode);
        var unreachable = await RunAsync(["queues", "--api", "http://127.0.0.1:1"]);
        Assert.Equal(ExitCodes.Unreachable, unreachable.ExitCode);
        Assert.Contains("Cannot reach the Api", unreachable.Err, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("\n")]
    [InlineData("\r\n")]
    [InlineData("é")]
    public async Task A_malformed_api_key_is_an_auth_error_that_does_not_show_the_key(string added)
    {
        var key = ErrorQueueKit.AdminKey + added;

        var run = await RunAsync(["queues"], key);

        Assert.Equal(ExitCodes.Auth, run.ExitCode);
        Assert.Contains($"{CliContext.ApiKeyVariable} is malformed", run.Err, StringComparison.Ordinal);
        Assert.DoesNotContain(ErrorQueueKit.AdminKey, run.Err, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    /// <summary>Another server at the Api's address (a proxy's sign-in page, some other service): a message and its own exit code, no crash.</summary>
    [Theory]
    [InlineData("queues", 200, "text/html", "<html><body>Sign in</body></html>", ExitCodes.UnexpectedAnswer)]
    [InlineData("audit", 200, "application/json", """{"hello":1}""", ExitCodes.UnexpectedAnswer)]
    [InlineData("messages charge-payment_error", 200, "application/json", "[1,2]", ExitCodes.UnexpectedAnswer)]
    // Accepted, but naming no operation: the Api may have started it (CliHostileAnswerTests has the words).
    [InlineData("move charge-payment_error --dry-run", 202, "application/json", """{"operationId":"not-a-uuid"}""", ExitCodes.StartUnknown)]
    [InlineData("operation 0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182", 200, "application/json", """{"hello":1}""", ExitCodes.UnexpectedAnswer)]
    // With --json too: nothing is printed as if a Conveyor Api had said it.
    [InlineData("queues --json", 200, "text/html", "<html><body>Sign in</body></html>", ExitCodes.UnexpectedAnswer)]
    [InlineData("queues --json", 200, "application/json", """{"hello":1}""", ExitCodes.UnexpectedAnswer)]
    [InlineData("operations --json", 200, "text/html", "<html><body>Sign in</body></html>", ExitCodes.UnexpectedAnswer)]
    [InlineData("audit --json", 200, "application/json", "[1,2]", ExitCodes.UnexpectedAnswer)]
    [InlineData("messages charge-payment_error --json", 200, "text/html", "<html><body>Sign in</body></html>", ExitCodes.UnexpectedAnswer)]
    [InlineData("groups charge-payment_error --json", 200, "application/json", "[]", ExitCodes.UnexpectedAnswer)]
    [InlineData("operation 0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182 --json", 200, "text/html", "<html><body>Sign in</body></html>", ExitCodes.UnexpectedAnswer)]
    [InlineData("job 0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182 --json", 200, "text/html", "<html><body>Sign in</body></html>", ExitCodes.UnexpectedAnswer)]
    [InlineData("jobs --json", 200, "application/json", """{"hello":1}""", ExitCodes.UnexpectedAnswer)]
    [InlineData("queues", 400, "application/problem+json", """{"title":"Nope","errors":{"limit":"too big","x":[7]}}""", ExitCodes.Usage)]
    public async Task An_answer_no_conveyor_api_gives_is_reported_without_a_crash(string command, int status, string mediaType, string body, int exitCode)
    {
        using var impostor = new CannedAnswer((System.Net.HttpStatusCode)status, mediaType, body);
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = "http://conveyor.invalid/",
            [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey,
        };

        var code = await CliApp.RunAsync(command.Split(' '), stdout, stderr, impostor, environment);

        Assert.Equal(exitCode, code);
        Assert.DoesNotContain("   at ", stderr.ToString(), StringComparison.Ordinal);
        if (exitCode is ExitCodes.UnexpectedAnswer or ExitCodes.StartUnknown)
        {
            Assert.Contains(CliContext.ApiUrlVariable, stderr.ToString(), StringComparison.Ordinal);
            Assert.Equal("", stdout.ToString());
        }
        else
        {
            Assert.Contains("limit: too big", stderr.ToString(), StringComparison.Ordinal);
            Assert.Contains("x: 7", stderr.ToString(), StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(202, """{"hello":1}""", ExitCodes.UnexpectedAnswer)]
    [InlineData(202, """{"jobs":[]}""", ExitCodes.UnexpectedAnswer)]
    [InlineData(503, "<html>Service Unavailable</html>", ExitCodes.Unreachable)]
    [InlineData(400, """{"title":"Refused","jobs":[{"index":-1,"error":{"status":400}}]}""", ExitCodes.UnexpectedAnswer)]
    [InlineData(400, """{"title":"Refused","jobs":[{"index":1,"error":{"status":400}}]}""", ExitCodes.UnexpectedAnswer)]
    public async Task Submit_reports_an_answer_no_conveyor_api_gives_without_a_crash(int status, string body, int exitCode)
    {
        using var impostor = new CannedAnswer((System.Net.HttpStatusCode)status, body.StartsWith('<') ? "text/html" : "application/json", body);
        using var file = new TempFile(JobRequests.ChargePayment(Guid.NewGuid()));
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = "http://conveyor.invalid/",
            [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey,
        };

        var code = await CliApp.RunAsync(["submit", "charge-payment", file.Path, "--retries", "0"], stdout, stderr, impostor, environment);

        Assert.Equal(exitCode, code);
        Assert.DoesNotContain("   at ", stderr.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_api_url_comes_from_the_environment_when_not_given()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = App.BaseAddress.ToString(),
            [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey,
        };

        var exitCode = await CliApp.RunAsync(["audit", "--json"], stdout, stderr, environment: environment);

        Assert.Equal(ExitCodes.Ok, exitCode);
        Assert.Equal(JsonValueKind.Array, JsonDocument.Parse(stdout.ToString()).RootElement.ValueKind);
    }

    /// <summary>The command a line of <paramref name="text"/> printed after <paramref name="prefix"/>, split into words as a POSIX shell splits it.</summary>
    private static string[] PrintedCommand(string text, string prefix)
    {
        var start = text.IndexOf(prefix + "conveyor ", StringComparison.Ordinal);
        Assert.True(start >= 0, text);
        var line = text[(start + prefix.Length)..].Split('\n')[0].TrimEnd();
        return [.. ShellWordsOf(line).Skip(1)];
    }

    /// <summary>Words of a command line as a POSIX shell reads plain words and single quotes (all the CLI prints).</summary>
    private static List<string> ShellWordsOf(string line)
    {
        var words = new List<string>();
        var word = new System.Text.StringBuilder();
        var inWord = false;
        for (var i = 0; i < line.Length; i++)
        {
            var c = line[i];
            if (c == '\'')
            {
                var end = line.IndexOf('\'', i + 1);
                Assert.True(end > i, $"unclosed quote: {line}");
                word.Append(line, i + 1, end - i - 1);
                (i, inWord) = (end, true);
            }
            else if (c == '\\' && i + 1 < line.Length)
            {
                word.Append(line[++i]);
                inWord = true;
            }
            else if (c == ' ')
            {
                if (inWord)
                {
                    words.Add(word.ToString());
                    (word, inWord) = (new System.Text.StringBuilder(), false);
                }
            }
            else
            {
                Assert.DoesNotContain(c, "\"$`;&|<>*?()");
                word.Append(c);
                inWord = true;
            }
        }

        if (inWord)
        {
            words.Add(word.ToString());
        }

        return words;
    }

    /// <summary>The CLI, its requests answered by a stand-in with <paramref name="status"/> and <paramref name="body"/>.</summary>
    private static async Task<CliRun> RunWithAnswerAsync(string[] args, System.Net.HttpStatusCode status, string mediaType, string body)
    {
        using var answer = new CannedAnswer(status, mediaType, body);
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var environment = new Dictionary<string, string?>
        {
            [CliContext.ApiUrlVariable] = "http://conveyor.invalid/",
            [CliContext.ApiKeyVariable] = ErrorQueueKit.AdminKey,
        };
        var exitCode = await CliApp.RunAsync(args, stdout, stderr, answer, environment);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    private Task<CliRun> RunAsync(params string[] args) => RunAsync(args, ErrorQueueKit.AdminKey);

    private async Task<CliRun> RunAsync(string[] args, string? key)
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var exitCode = await StartAsync(args, key, stdout, stderr);
        return new CliRun(exitCode, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Runs the CLI against this Api with <paramref name="key"/>, writing where the caller reads, even while it runs.</summary>
    private Task<int> StartAsync(string[] args, string? key, TextWriter stdout, TextWriter stderr)
    {
        var environment = new Dictionary<string, string?> { [CliContext.ApiKeyVariable] = key };
        var withApi = args.Contains("--api") ? args : [.. args, "--api", App.BaseAddress.ToString()];
        return CliApp.RunAsync(withApi, stdout, stderr, environment: environment);
    }

    private sealed record CliRun(int ExitCode, string Out, string Err);

    /// <summary>A file with the given text, deleted at the end.</summary>
    private sealed class TempFile : IDisposable
    {
        public TempFile(string text)
        {
            Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"conveyor-cli-{Guid.NewGuid():N}.json");
            File.WriteAllText(Path, text);
        }

        public string Path { get; }

        public void Dispose() => File.Delete(Path);
    }

    /// <summary>
    /// A gateway in front of the Api: it forwards every request, and answers the first with its own 504 (an HTML page) once
    /// the Api has answered it, as a gateway that stopped waiting just before the Api's answer came.
    /// </summary>
    private sealed class TimingOutOnce(HttpMessageHandler inner) : DelegatingHandler(inner)
    {
        private int _requests;

        public int Requests => Volatile.Read(ref _requests);

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var answer = await base.SendAsync(request, cancellationToken);
            if (Interlocked.Increment(ref _requests) > 1)
            {
                return answer;
            }

            answer.Dispose();
            return new HttpResponseMessage(System.Net.HttpStatusCode.GatewayTimeout)
            {
                Content = new StringContent("<html><body>504 Gateway Time-out</body></html>", System.Text.Encoding.UTF8, "text/html"),
            };
        }
    }

    /// <summary>Answers every request with the same status, media type and body.</summary>
    private sealed class CannedAnswer(System.Net.HttpStatusCode status, string mediaType, string body) : HttpMessageHandler
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) =>
            Task.FromResult(new HttpResponseMessage(status) { Content = new StringContent(body, System.Text.Encoding.UTF8, mediaType) });
    }
}
