using System.Diagnostics.Metrics;
using System.Net;
using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>Listing, inspecting, grouping, moving and purging error-queue messages through the Api.</summary>
[Collection(SecondLaneCollection.Name)]
public sealed class ErrorQueueApiTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    private const string Timeout = "System.TimeoutException";
    private const string Declined = "Conveyor.Worker.Failures.PermanentFailureException";

    [Fact]
    public async Task Lists_error_and_skipped_queues_with_depth_and_source_queue()
    {
        await Broker.DeclareAsync("deliver-webhook_skipped");
        for (var i = 0; i < 3; i++)
        {
            await Broker.DeadLetterChargeAsync(Timeout, "The gateway timed out");
        }

        await Broker.DeadLetterChargeAsync(Timeout, "x", queue: "deliver-webhook_skipped");

        await Eventually.AssertAsync(async () =>
        {
            var queues = (await Admin.GetJsonAsync("/api/error-queues")).EnumerateArray().ToDictionary(q => q.GetProperty("name").GetString()!);
            // Other tests of this run may have left more (empty) error queues behind.
            Assert.Contains("charge-payment_error", queues.Keys);
            Assert.Contains("deliver-webhook_skipped", queues.Keys);
            Assert.DoesNotContain(queues.Keys, name => !name.EndsWith("_error", StringComparison.Ordinal) && !name.EndsWith("_skipped", StringComparison.Ordinal));
            var errors = queues["charge-payment_error"];
            Assert.Equal(("error", "charge-payment", 3, 0), (
                errors.GetProperty("kind").GetString(), errors.GetProperty("sourceQueue").GetString(),
                errors.GetProperty("messages").GetInt64(), errors.GetProperty("consumers").GetInt32()));
            Assert.Equal("deliver-webhook", queues["deliver-webhook_skipped"].GetProperty("sourceQueue").GetString());
            Assert.Equal(1, queues["deliver-webhook_skipped"].GetProperty("messages").GetInt64());
        });
    }

    /// <summary>
    /// The management API's counters are statistics collected every few seconds: read right after messages
    /// arrived, or right after a purge ended, the listing showed the counts of before (a purge's walk still
    /// holding its messages unacknowledged, if the statistics were collected during it).
    /// </summary>
    [Fact]
    public async Task The_listing_counts_what_the_queue_holds_now_not_the_statistics_of_seconds_before()
    {
        for (var i = 0; i < 3; i++)
        {
            await Broker.DeadLetterChargeAsync(Declined, "declined");
        }

        Assert.Equal((3, 3, 0, 0), await ListedAsync(ErrorQueueKit.ChargeErrors));

        var path = $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/purge";
        var operation = await Admin.RunOperationAsync(path, new { confirm = ErrorQueueKit.ChargeErrors });

        Assert.Equal(("succeeded", 3), (operation.GetProperty("state").GetString(), operation.GetProperty("purged").GetInt64()));
        Assert.Equal((0, 0, 0, 0), await ListedAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task The_depth_gauge_reports_each_error_queue_for_alerting()
    {
        for (var i = 0; i < 2; i++)
        {
            await Broker.DeadLetterChargeAsync(Timeout, "timed out");
        }

        var monitor = App.Services.GetRequiredService<ErrorQueueDepthMonitor>();
        var depths = new Dictionary<string, long>();
        var meters = App.Services.GetRequiredService<IMeterFactory>();

        // The management API's counters lag by a few seconds.
        await Eventually.AssertAsync(async () =>
        {
            await monitor.RefreshAsync(CancellationToken.None);
            foreach (var (depth, tags) in HostMeters.Observe(meters, ErrorQueueDepthMonitor.MeterName, ErrorQueueDepthMonitor.DepthInstrument))
            {
                depths[(string)tags["queue"]!] = (long)depth;
            }

            Assert.Equal(2, depths.GetValueOrDefault(ErrorQueueKit.ChargeErrors));
        });
        Assert.DoesNotContain(ErrorQueueKit.ChargeQueue, depths.Keys);
    }

    [Fact]
    public async Task Peek_shows_each_fault_and_leaves_the_queue_as_it_was()
    {
        var faultedAt = new DateTimeOffset(2026, 11, 20, 8, 30, 0, TimeSpan.Zero);
        var ids = new List<string>();
        for (var i = 0; i < 5; i++)
        {
            ids.Add((await Broker.DeadLetterChargeAsync(Declined, $"The payment gateway answered 400 for payment {i}", faultedAt.AddMinutes(i))).ToString());
        }

        var peeked = await Admin.GetJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages?limit=3");

        Assert.Equal(5, peeked.GetProperty("queueDepth").GetInt64());
        var messages = peeked.GetProperty("messages").EnumerateArray().ToList();
        Assert.Equal(ids.Take(3), messages.Select(m => m.GetProperty("messageId").GetString()));
        var first = messages[0];
        Assert.Equal("Conveyor.Contracts.Payments.ChargePayment", first.GetProperty("messageType").GetString());
        Assert.Equal(Declined, first.GetProperty("exceptionType").GetString());
        Assert.Equal("The payment gateway answered 400 for payment 0", first.GetProperty("exceptionMessage").GetString());
        Assert.Contains("ChargePaymentConsumer.Consume", first.GetProperty("stackTrace").GetString(), StringComparison.Ordinal);
        Assert.Equal(faultedAt, first.GetProperty("faultedAt").GetDateTimeOffset());
        Assert.Equal("charge-payment", first.GetProperty("originalQueue").GetString());
        Assert.Equal(1, first.GetProperty("attempts").GetInt32());
        Assert.Contains("\"paymentId\"", first.GetProperty("bodyPreview").GetString(), StringComparison.Ordinal);
        Assert.Equal(12, first.GetProperty("groupId").GetString()!.Length);

        // Nothing was taken away or reordered, by this peek or the one before.
        Assert.Equal(ids, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        var all = await Admin.GetJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages?limit=10");
        Assert.Equal(ids, all.GetProperty("messages").EnumerateArray().Select(m => m.GetProperty("messageId").GetString()));
        Assert.Equal(ids, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>
    /// A body that is no UTF-8 text (protobuf, compressed, any binary a producer sent) is previewed as replacement
    /// characters, one per byte that is no text. Whether the preview was cut was told from the preview's length in
    /// UTF-8, three bytes for each of those characters: a 2,000-byte binary body previewed as its first 1,024 bytes
    /// read as not truncated (the dashboard said nothing of the 976 bytes left out). And the cut, moved back so as
    /// not to split a character, went back over every byte that looked like the middle of one: a body of such bytes
    /// was previewed as nothing at all.
    /// </summary>
    [Fact]
    public async Task A_peek_of_a_body_that_is_no_text_says_its_preview_is_cut_and_shows_its_first_bytes()
    {
        await Broker.PublishAsync(ErrorQueueKit.ChargeErrors, new RabbitMQ.Client.BasicProperties { MessageId = "binary" }, [.. Enumerable.Repeat((byte)0xFF, 2000)]);
        await Broker.PublishAsync(ErrorQueueKit.ChargeErrors, new RabbitMQ.Client.BasicProperties { MessageId = "continuations" }, [.. Enumerable.Repeat((byte)0x80, 2000)]);
        await Broker.PublishAsync(ErrorQueueKit.ChargeErrors, new RabbitMQ.Client.BasicProperties { MessageId = "short" }, [0xFF, 0x80]);

        var messages = (await Admin.GetJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages")).GetProperty("messages")
            .EnumerateArray().ToDictionary(m => m.GetProperty("messageId").GetString()!);

        static (int Bytes, bool Truncated, string Preview) Shown(JsonElement message) => (
            message.GetProperty("bodyBytes").GetInt32(), message.GetProperty("bodyTruncated").GetBoolean(), message.GetProperty("bodyPreview").GetString()!);
        // The first 1,024 bytes (BodyPreviewBytes), cut there: no byte before the cut can end a character it splits.
        Assert.Equal((2000, true, new string('\uFFFD', 1024)), Shown(messages["binary"]));
        // Cut at most three bytes earlier, as far back as a character of UTF-8 can begin.
        Assert.Equal((2000, true, new string('\uFFFD', 1021)), Shown(messages["continuations"]));
        // A body within the preview is shown whole, and said to be.
        Assert.Equal((2, false, "\uFFFD\uFFFD"), Shown(messages["short"]));
        Assert.Equal(3u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>
    /// Whether moving a message back is safe shows in the peek: a job still dead-lettered runs again
    /// through the inbox's rules; a job whose row is gone (swept after Retention:JobHours) would run
    /// again unguarded; a message that names no job says nothing.
    /// </summary>
    [Fact]
    public async Task Peek_shows_the_status_of_each_messages_job_now()
    {
        var deadLettered = Guid.NewGuid();
        var succeeded = Guid.NewGuid();
        var swept = Guid.NewGuid();
        await using (var db = Fixture.CreateDbContext())
        {
            db.Jobs.AddRange(
                new Job { Id = deadLettered, Kind = "charge-payment", BusinessKey = Guid.NewGuid().ToString(), Status = JobStatus.DeadLettered, CreatedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow },
                new Job { Id = succeeded, Kind = "charge-payment", BusinessKey = Guid.NewGuid().ToString(), Status = JobStatus.Succeeded, CreatedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow });
            await db.SaveChangesAsync();
        }

        foreach (var job in new[] { deadLettered, succeeded, swept })
        {
            await Broker.DeadLetterChargeAsync(Declined, "declined",
                extraHeaders: new Dictionary<string, object?> { [Conveyor.Contracts.JobHeaders.JobId] = job.ToString() });
        }

        await Broker.DeadLetterChargeAsync(Declined, "declined");

        var peeked = await Admin.GetJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages");

        var statuses = peeked.GetProperty("messages").EnumerateArray()
            .Select(m => m.GetProperty("jobStatus") is { ValueKind: JsonValueKind.String } status ? status.GetString() : null);
        Assert.Equal([JobStatus.DeadLettered, JobStatus.Succeeded, ErrorQueueMessage.JobStatusMissing, null], statuses);
    }

    /// <summary>
    /// Before moving thousands of messages back, a dry run tells how many of their jobs have lost their
    /// row (swept after Retention:JobHours): those would run again unguarded. A job whose row exists
    /// is not counted, nor is a message that names no job.
    /// </summary>
    [Fact]
    public async Task A_dry_run_counts_the_selected_messages_jobs_whose_row_is_gone()
    {
        var ids = await DeadLetterWithJobsAsync();

        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true });

        Assert.Equal(("succeeded", false), (operation.GetProperty("state").GetString(), operation.GetProperty("partial").GetBoolean()));
        Assert.Equal((4, 0, 2), (
            operation.GetProperty("matched").GetInt64(), operation.GetProperty("moved").GetInt64(), operation.GetProperty("jobsMissing").GetInt64()));
        Assert.Equal(ids, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    /// <summary>A real move reports the same count: the jobs it has just set to run again without deduplication.</summary>
    [Fact]
    public async Task A_move_reports_how_many_of_the_moved_messages_jobs_have_no_row()
    {
        var ids = await DeadLetterWithJobsAsync();

        var operation = await Admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });

        Assert.Equal(("succeeded", 4L, 2L), (
            operation.GetProperty("state").GetString(), operation.GetProperty("moved").GetInt64(), operation.GetProperty("jobsMissing").GetInt64()));
        Assert.Equal(ids, (await Broker.ReadAllAsync(ErrorQueueKit.ChargeQueue)).Select(c => c.MessageId));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));

        // The audit trail keeps it.
        var listed = (await Admin.GetJsonAsync($"/api/operations?queue={ErrorQueueKit.ChargeErrors}")).EnumerateArray()
            .Single(o => o.GetProperty("operationId").GetString() == operation.GetProperty("operationId").GetString());
        Assert.Equal(2, listed.GetProperty("jobsMissing").GetInt64());
    }

    /// <summary>
    /// The count is advice, taken after the walk: when the job rows cannot be read (here a lock held
    /// past the check's 10 s), the operation still ends as it did, with <c>jobsMissing</c> unknown
    /// (null), never a 0 that would read as "all guarded".
    /// </summary>
    [Fact]
    public async Task When_the_job_rows_cannot_be_read_the_operation_ends_as_it_did_with_jobs_missing_unknown()
    {
        var ids = await DeadLetterWithJobsAsync();
        await using var holder = new NpgsqlConnection(Fixture.ConnectionString);
        await holder.OpenAsync();
        await using var locked = await holder.BeginTransactionAsync();
        await using (var lockJobs = new NpgsqlCommand("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE", holder, locked))
        {
            await lockJobs.ExecuteNonQueryAsync();
        }

        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true }, TimeSpan.FromSeconds(60));
        await locked.RollbackAsync();

        Assert.Equal(("succeeded", 4L), (operation.GetProperty("state").GetString(), operation.GetProperty("matched").GetInt64()));
        Assert.Equal(JsonValueKind.Null, operation.GetProperty("jobsMissing").ValueKind);
        Assert.Equal(ids, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>
    /// Four messages: one of a job whose row exists, two of jobs with no row, one that names no job.
    /// Returns the message ids in queue order.
    /// </summary>
    private async Task<List<string>> DeadLetterWithJobsAsync()
    {
        var kept = Guid.NewGuid();
        await using (var db = Fixture.CreateDbContext())
        {
            db.Jobs.Add(new Job
            {
                Id = kept, Kind = "charge-payment", BusinessKey = Guid.NewGuid().ToString(), Status = JobStatus.DeadLettered,
                CreatedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        var ids = new List<string>();
        foreach (var job in new[] { kept, Guid.NewGuid(), Guid.NewGuid() })
        {
            ids.Add((await Broker.DeadLetterChargeAsync(Declined, "declined",
                extraHeaders: new Dictionary<string, object?> { [Conveyor.Contracts.JobHeaders.JobId] = job.ToString() })).ToString());
        }

        ids.Add((await Broker.DeadLetterChargeAsync(Declined, "declined")).ToString());
        return ids;
    }

    [Fact]
    public async Task Groups_faults_whose_messages_differ_only_in_ids_and_numbers()
    {
        var start = new DateTimeOffset(2026, 11, 21, 0, 0, 0, TimeSpan.Zero);
        for (var i = 0; i < 4; i++)
        {
            await Broker.DeadLetterChargeAsync(Declined, $"Account acct-{i} was not found (payment {Guid.NewGuid()})", start.AddHours(i));
        }

        await Broker.DeadLetterChargeAsync(Timeout, "No answer after 30 seconds", start.AddDays(1));
        await Broker.DeadLetterChargeAsync(Timeout, "No answer after 45 seconds", start.AddDays(2));

        var result = await Admin.GetJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/groups");

        Assert.Equal(6, result.GetProperty("examined").GetInt64());
        var groups = result.GetProperty("groups").EnumerateArray().ToList();
        Assert.Equal(2, groups.Count);
        Assert.Equal((4, Declined), (groups[0].GetProperty("count").GetInt64(), groups[0].GetProperty("exceptionType").GetString()));
        Assert.Equal("Account acct-{n} was not found (payment {guid})", groups[0].GetProperty("normalisedMessage").GetString());
        Assert.Equal(start, groups[0].GetProperty("firstSeen").GetDateTimeOffset());
        Assert.Equal(start.AddHours(3), groups[0].GetProperty("lastSeen").GetDateTimeOffset());
        Assert.Equal((2, Timeout), (groups[1].GetProperty("count").GetInt64(), groups[1].GetProperty("exceptionType").GetString()));
        Assert.NotEqual(groups[0].GetProperty("groupId").GetString(), groups[1].GetProperty("groupId").GetString());
        Assert.Equal(6u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task Moving_by_exception_type_moves_only_those_and_the_rest_keep_their_order()
    {
        // 240 messages with a window of 50: the walk passes over the kept ones on several channels.
        var moved = new List<string>();
        var kept = new List<string>();
        for (var i = 0; i < 240; i++)
        {
            var timeout = i % 3 == 0;
            var id = (await Broker.DeadLetterChargeAsync(timeout ? Timeout : Declined, timeout ? "timed out" : "declined")).ToString();
            (timeout ? moved : kept).Add(id);
        }

        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter = new { exceptionType = "TimeoutException" } });

        Assert.Equal("succeeded", operation.GetProperty("state").GetString());
        Assert.Equal((240, 80, 80, 0), (
            operation.GetProperty("examined").GetInt64(), operation.GetProperty("matched").GetInt64(),
            operation.GetProperty("moved").GetInt64(), operation.GetProperty("failed").GetInt64()));
        Assert.Equal(160, operation.GetProperty("left").GetInt64());
        Assert.Equal(80, operation.GetProperty("targets").GetProperty(ErrorQueueKit.ChargeQueue).GetInt64());
        Assert.Equal(kept, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));

        var copies = await Broker.ReadAllAsync(ErrorQueueKit.ChargeQueue);
        Assert.Equal(moved, copies.Select(c => c.MessageId));
        var copy = copies[0];
        Assert.DoesNotContain(copy.Headers.Keys, h => h.StartsWith("MT-Fault-", StringComparison.Ordinal));
        Assert.DoesNotContain(copy.Headers.Keys, h => h is "MT-Reason" or "Conveyor-Redelivery-Attempt" or "Conveyor-Attempts" or "Conveyor-First-Failure-At");
        Assert.Equal(ErrorQueueKit.ChargeErrors, copy.Header("Conveyor-Moved-From"));
        Assert.Equal(operation.GetProperty("operationId").GetString(), copy.Header("Conveyor-Moved-By-Operation"));
        var history = JsonDocument.Parse(copy.Header("Conveyor-Fault-History")!).RootElement;
        Assert.Equal(Timeout, Assert.Single(history.EnumerateArray()).GetProperty("exceptionType").GetString());
        Assert.Contains("\"acct-eq\"", copy.Body, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Moving_by_job_id_moves_the_commands_of_those_jobs_only()
    {
        var jobs = Enumerable.Range(0, 4).Select(_ => Guid.NewGuid()).ToList();
        var ids = new List<string>();
        foreach (var job in jobs)
        {
            ids.Add((await Broker.DeadLetterChargeAsync(Declined, "declined",
                extraHeaders: new Dictionary<string, object?> { [Conveyor.Contracts.JobHeaders.JobId] = job.ToString() })).ToString());
        }

        // A message without a job id (a command published before its job row existed) never matches.
        ids.Add((await Broker.DeadLetterChargeAsync(Declined, "declined")).ToString());

        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter = new { jobIds = new[] { jobs[1], jobs[3] } } });

        Assert.Equal(("succeeded", 2L), (operation.GetProperty("state").GetString(), operation.GetProperty("moved").GetInt64()));
        Assert.Equal([ids[1], ids[3]], (await Broker.ReadAllAsync(ErrorQueueKit.ChargeQueue)).Select(c => c.MessageId));
        Assert.Equal([ids[0], ids[2], ids[4]], await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(2, operation.GetProperty("filter").GetProperty("jobIds").GetArrayLength());
    }

    [Fact]
    public async Task Moving_a_group_with_a_limit_and_a_target_moves_that_many_of_that_group()
    {
        await Broker.DeclareAsync("charge-payment-replay");
        var grouped = new List<string>();
        for (var i = 0; i < 10; i++)
        {
            grouped.Add((await Broker.DeadLetterChargeAsync(Declined, $"Account acct-{i} was not found")).ToString());
            await Broker.DeadLetterChargeAsync(Timeout, "timed out");
        }

        var groups = await Admin.GetJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/groups");
        var groupId = groups.GetProperty("groups").EnumerateArray()
            .Single(g => g.GetProperty("exceptionType").GetString() == Declined).GetProperty("groupId").GetString();

        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter = new { groupId }, target = "charge-payment-replay", limit = 4 });

        Assert.Equal(4, operation.GetProperty("moved").GetInt64());
        Assert.Equal(grouped.Take(4), await Broker.IdsAsync("charge-payment-replay"));
        Assert.Equal(grouped.Take(4), operation.GetProperty("messageIds").EnumerateArray().Select(i => i.GetString()));
        Assert.Equal(16u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task A_dry_run_changes_nothing_and_reports_what_would_move()
    {
        var ids = new List<string>();
        for (var i = 0; i < 6; i++)
        {
            ids.Add((await Broker.DeadLetterChargeAsync(i < 4 ? Timeout : Declined, "failed")).ToString());
        }

        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter = new { exceptionType = Timeout }, dryRun = true });

        Assert.Equal("succeeded", operation.GetProperty("state").GetString());
        Assert.True(operation.GetProperty("dryRun").GetBoolean());
        Assert.Equal((4, 0), (operation.GetProperty("matched").GetInt64(), operation.GetProperty("moved").GetInt64()));
        Assert.Equal(ids.Take(4), operation.GetProperty("messageIds").EnumerateArray().Select(i => i.GetString()));
        Assert.Equal(ids, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    /// <summary>
    /// The filter takes up to 1,000 message ids of up to 200 characters, and a JSON writer may escape each
    /// character as <c>\uXXXX</c> (System.Text.Json escapes every non-ASCII one by default): such a request
    /// is over a megabyte, and a body limit of 256 KiB refused it with a 413 although every field was valid.
    /// </summary>
    [Fact]
    public async Task A_move_of_the_most_message_ids_a_filter_takes_each_written_escaped_is_accepted()
    {
        var id = (await Broker.DeadLetterChargeAsync(Timeout, "x")).ToString();
        var ids = Enumerable.Range(1, MessageFilter.MaxMessageIds - 1).Select(i => new string('é', 196) + i.ToString("D4", System.Globalization.CultureInfo.InvariantCulture)).Prepend(id).ToArray();

        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter = new { messageIds = ids }, dryRun = true });

        Assert.Equal(("succeeded", 1L), (operation.GetProperty("state").GetString(), operation.GetProperty("matched").GetInt64()));
        Assert.Equal([id], operation.GetProperty("messageIds").EnumerateArray().Select(i => i.GetString()));
        Assert.Equal([id], await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task A_move_whose_body_is_over_the_limit_is_a_413_and_nothing_moves()
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");
        // 1.5 MiB: over the endpoint's limit (about 1.4 MiB), under the server's 2 MiB.
        using var content = new ByteArrayContent(System.Text.Encoding.UTF8.GetBytes("{\"filter\":{}" + new string(' ', 3 * 512 * 1024) + "}"));
        content.Headers.ContentType = new("application/json");

        using var response = await Admin.PostAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", UriKind.Relative), content);

        Assert.Equal(413, (int)response.StatusCode);
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task A_dry_run_reports_as_failed_the_messages_a_move_could_not_deliver_and_changes_nothing()
    {
        // Consumed from a queue that has since been deleted: a move's copies of these come back unroutable.
        var gone = new Dictionary<string, object?> { ["MT-Fault-InputAddress"] = "rabbitmq://127.0.0.1/test/charge-payment-retired" };
        var ids = new List<string>();
        for (var i = 0; i < 4; i++)
        {
            ids.Add((await Broker.DeadLetterChargeAsync(Timeout, "timed out", extraHeaders: i < 3 ? gone : null)).ToString());
        }

        var operation = await Admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true });

        Assert.Equal(("succeeded", true), (operation.GetProperty("state").GetString(), operation.GetProperty("partial").GetBoolean()));
        Assert.Equal((4L, 0L, 3L), (
            operation.GetProperty("matched").GetInt64(), operation.GetProperty("moved").GetInt64(), operation.GetProperty("failed").GetInt64()));
        Assert.Contains("no queue 'charge-payment-retired'", operation.GetProperty("detail").GetString(), StringComparison.Ordinal);
        // Only the message that would move is listed, under the queue it would go to.
        Assert.Equal([ids[3]], operation.GetProperty("messageIds").EnumerateArray().Select(i => i.GetString()));
        Assert.Equal(1L, operation.GetProperty("targets").GetProperty(ErrorQueueKit.ChargeQueue).GetInt64());
        Assert.Equal(ids, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task Purge_needs_the_queue_name_as_confirmation_and_removes_only_the_selected_messages()
    {
        var before = new DateTimeOffset(2026, 11, 1, 0, 0, 0, TimeSpan.Zero);
        var old = new List<string>();
        var recent = new List<string>();
        for (var i = 0; i < 8; i++)
        {
            var isOld = i % 2 == 0;
            var id = await Broker.DeadLetterChargeAsync(Declined, "declined", isOld ? before.AddDays(-1) : before.AddDays(1));
            (isOld ? old : recent).Add(id.ToString());
        }

        var path = $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/purge";
        var filter = new { faultedBefore = before };
        using (var missing = await Admin.PostJsonAsync(path, new { filter }))
        {
            Assert.Equal(["confirm"], await missing.ErrorFieldsAsync());
        }

        using (var wrong = await Admin.PostJsonAsync(path, new { filter, confirm = "charge-payment" }))
        {
            Assert.Equal(["confirm"], await wrong.ErrorFieldsAsync());
        }

        Assert.Equal(8u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));

        var operation = await Admin.RunOperationAsync(path, new { filter, confirm = ErrorQueueKit.ChargeErrors });

        Assert.Equal(("succeeded", 4), (operation.GetProperty("state").GetString(), operation.GetProperty("purged").GetInt64()));
        Assert.Equal(old, operation.GetProperty("messageIds").EnumerateArray().Select(i => i.GetString()));
        Assert.Equal(recent, await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task The_audit_trail_names_who_did_what_to_which_messages()
    {
        var id = (await Broker.DeadLetterChargeAsync(Timeout, "timed out")).ToString();
        await Admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter = new { messageIds = new[] { id } } });

        var entry = Assert.Single((await Admin.GetJsonAsync("/api/audit")).EnumerateArray());

        Assert.Equal(ErrorQueueKit.AdminName, entry.GetProperty("requestedBy").GetString());
        Assert.Equal("move", entry.GetProperty("kind").GetString());
        Assert.Equal(ErrorQueueKit.ChargeErrors, entry.GetProperty("queue").GetString());
        Assert.Equal(1, entry.GetProperty("targets").GetProperty(ErrorQueueKit.ChargeQueue).GetInt64());
        Assert.Equal(id, Assert.Single(entry.GetProperty("filter").GetProperty("messageIds").EnumerateArray()).GetString());
        Assert.Equal(id, Assert.Single(entry.GetProperty("messageIds").EnumerateArray()).GetString());
        Assert.Equal(1, entry.GetProperty("moved").GetInt64());
        Assert.True(entry.GetProperty("finishedAt").GetDateTimeOffset() >= entry.GetProperty("createdAt").GetDateTimeOffset());
        Assert.Empty((await Admin.GetJsonAsync($"/api/audit?requestedBy=someone-else")).EnumerateArray());
    }

    [Fact]
    public async Task A_second_operation_on_a_queue_is_refused_while_the_first_runs()
    {
        // Paced at two messages a second, the move cannot end in less than 7.5 s, however fast the
        // machine: the four requests below all come while it runs.
        const int Messages = 16;
        await using var slowApi = await Fixture.StartApiAsync(ErrorQueueKit.ApiSettings(maxMessagesPerSecond: 2));
        using var slow = ErrorQueueKit.Client(slowApi.BaseAddress);
        for (var i = 0; i < Messages; i++)
        {
            await Broker.DeadLetterChargeAsync(Timeout, "timed out");
        }

        using var first = await slow.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });
        var running = (await first.JsonAsync()).GetProperty("operationId").GetGuid();

        // Another Api replica, same database: refused too, naming the running operation.
        using var second = await Admin.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/purge", new { confirm = ErrorQueueKit.ChargeErrors });
        Assert.Equal(HttpStatusCode.Conflict, second.StatusCode);
        var problem = JsonDocument.Parse(await second.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(running, problem.GetProperty("operationId").GetGuid());
        using var peek = await Admin.GetAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Conflict, peek.StatusCode);
        // "Queue busy" is no conflict for good: both say when to try again.
        Assert.Equal(TimeSpan.FromSeconds(5), second.Headers.RetryAfter?.Delta);
        Assert.Equal(TimeSpan.FromSeconds(5), peek.Headers.RetryAfter?.Delta);

        var progress = await slow.GetJsonAsync($"/api/operations/{running}");
        Assert.Equal("running", progress.GetProperty("state").GetString());
        var done = await slow.WaitForOperationAsync(running);
        Assert.Equal(("succeeded", Messages), (done.GetProperty("state").GetString(), done.GetProperty("moved").GetInt64()));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal((uint)Messages, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Theory]
    [InlineData("charge-payment", 404)]
    [InlineData("no-such-queue_error", 404)]
    public async Task Queues_that_are_not_existing_error_queues_are_404(string queue, int status)
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");
        foreach (var (method, path) in new[] { ("GET", "messages"), ("GET", "groups"), ("POST", "move"), ("POST", "purge") })
        {
            using var request = new HttpRequestMessage(new HttpMethod(method), new Uri($"/api/error-queues/{queue}/{path}", UriKind.Relative));
            if (method == "POST")
            {
                request.Content = JsonContent(new { confirm = queue });
            }

            using var response = await Admin.SendAsync(request);
            Assert.Equal(status, (int)response.StatusCode);
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        }
    }

    public static TheoryData<string, string[]> InvalidMoves => new()
    {
        { """{"filter":{"exceptionTyp":"X"}}""", ["filter.exceptionTyp"] },
        { """{"filter":{"faultedBefore":"yesterday","messageIds":[]}}""", ["filter.faultedBefore", "filter.messageIds"] },
        { """{"filter":{"faultedAfter":"2026-11-02T00:00:00Z","faultedBefore":"2026-11-01T00:00:00Z"}}""", ["filter.faultedAfter"] },
        { """{"filter":{"groupId":"not-hex!"},"limit":0,"dryRun":"yes"}""", ["filter.groupId", "limit", "dryRun"] },
        { """{"target":"no-such-queue"}""", ["target"] },
        { """{"target":"charge-payment_error"}""", ["target"] },
        { """{"filter":[1]}""", ["filter"] },
        { """[1]""", ["$"] },
        { """{"limit":""", ["$"] },
        { """{"filter":{"messageIds":["\udc01"]}}""", ["filter"] },
        { """{"filter":{"jobIds":["not-a-uuid"]}}""", ["filter.jobIds"] },
        { """{"filter":{"jobIds":[]}}""", ["filter.jobIds"] },
        // Names the management API's URL would read as path steps (the queue listing, not a queue).
        { """{"target":"."}""", ["target"] },
        { """{"target":".."}""", ["target"] },
        { """{"target":" .. "}""", ["target"] },
        // A queue name is taken as given, never trimmed into another queue's (charge-payment exists).
        { """{"target":" charge-payment"}""", ["target"] },
        { """{"target":"charge-payment\n"}""", ["target"] },
        // Recorded with the operation as jsonb, which refuses a NUL.
        { """{"filter":{"exceptionType":"System.TimeoutException\u0000","messageType":"\u0000"}}""", ["filter.exceptionType", "filter.messageType"] },
        { """{"filter":{"messageIds":["a\u0000"]}}""", ["filter.messageIds"] },
    };

    [Theory]
    [MemberData(nameof(InvalidMoves))]
    public async Task An_invalid_move_is_a_400_naming_each_bad_field(string json, string[] fields)
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");
        using var content = new StringContent(json, System.Text.Encoding.UTF8, "application/json");

        using var response = await Admin.PostAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", UriKind.Relative), content);

        Assert.Equal(fields.ToHashSet(), await response.ErrorFieldsAsync());
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    public static TheoryData<string, string, string[]> AmbiguousOperations => new()
    {
        // One field twice in different casings: which value counts would be a guess.
        { "purge", """{"confirm":"charge-payment_error","Filter":null,"filter":{"messageIds":["m1"]}}""", ["filter"] },
        { "purge", """{"confirm":"charge-payment_error","filter":{"MessageIds":null,"messageIds":["m1"]}}""", ["filter.messageIds"] },
        { "move", """{"filter":{"messageIds":["m1"],"MESSAGEIDS":null}}""", ["filter.MESSAGEIDS"] },
        { "move", """{"DryRun":null,"dryRun":true}""", ["dryRun"] },
        { "purge", """{"confirm":"charge-payment_error","dryRun":true,"DRYRUN":false}""", ["DRYRUN"] },
        // An explicit null must not read as "not given", which means "no restriction".
        { "purge", """{"confirm":"charge-payment_error","filter":null}""", ["filter"] },
        { "purge", """{"confirm":"charge-payment_error","filter":{"messageIds":null}}""", ["filter.messageIds"] },
        { "purge", """{"confirm":"charge-payment_error","filter":{"exceptionType":"X","groupId":null}}""", ["filter.groupId"] },
        { "move", """{"filter":{"jobIds":null,"faultedBefore":null}}""", ["filter.jobIds", "filter.faultedBefore"] },
        { "move", """{"dryRun":null}""", ["dryRun"] },
        { "move", """{"limit":null}""", ["limit"] },
        { "move", """{"target":null}""", ["target"] },
    };

    [Theory]
    [MemberData(nameof(AmbiguousOperations))]
    public async Task A_field_given_twice_in_different_casings_or_as_null_is_a_400_and_nothing_moves(string kind, string json, string[] fields)
    {
        for (var i = 0; i < 3; i++)
        {
            await Broker.DeadLetterChargeAsync(Timeout, "x");
        }

        using var content = new StringContent(json, System.Text.Encoding.UTF8, "application/json");

        using var response = await Admin.PostAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/{kind}", UriKind.Relative), content);

        Assert.Equal(fields.ToHashSet(), await response.ErrorFieldsAsync());
        Assert.Equal(3u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task A_move_whose_body_is_not_utf8_is_a_400_naming_the_body()
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");
        byte[] body = [.. "{\"filter\":{\"exceptionType\":\""u8, 0xFF, 0xFE, .. "\"}}"u8];
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new("application/json");

        using var response = await Admin.PostAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", UriKind.Relative), content);

        Assert.Equal(["$"], await response.ErrorFieldsAsync());
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task A_bad_limit_on_a_peek_is_a_400_naming_limit()
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");

        using var response = await Admin.GetAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages?limit=0", UriKind.Relative));

        Assert.Equal(["limit"], await response.ErrorFieldsAsync());
    }

    /// <summary>
    /// A parameter given twice is said to be given twice, as <c>GET /api/operations</c> and <c>/api/audit</c> say it: its
    /// values were joined to <c>1,2</c>, which was refused as no integer between 1 and the most, though each value was one.
    /// </summary>
    [Theory]
    [InlineData("messages?limit=1&limit=2")]
    [InlineData("groups?limit=1&limit=2")]
    [InlineData("messages?limit=5&Limit=5")]
    public async Task A_query_parameter_a_peek_or_grouping_is_given_twice_is_a_400_saying_so(string pathAndQuery)
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");

        using var response = await Admin.GetAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/{pathAndQuery}", UriKind.Relative));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("limit", Assert.Single(await response.ErrorFieldsAsync()), ignoreCase: true);
        var body = await response.Content.ReadAsStringAsync();
        Assert.Contains("Must be given once.", body, StringComparison.Ordinal);
        Assert.DoesNotContain("Must be an integer", body, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("messages?limt=3", "limt")]
    [InlineData("groups?max=5", "max")]
    public async Task A_query_parameter_a_peek_or_grouping_does_not_read_is_a_400_naming_it(string pathAndQuery, string field)
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");

        using var response = await Admin.GetAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/{pathAndQuery}", UriKind.Relative));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ErrorFieldsAsync());
        Assert.Contains("the parameters are: limit.", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    /// <summary>
    /// A move or purge reads its options from the body only: <c>?dryRun=true</c> in the query was ignored, so an
    /// operator asking for a dry run moved the messages for real.
    /// </summary>
    [Theory]
    [InlineData("move?dryRun=true", "dryRun", """{}""")]
    [InlineData("purge?dryRun=true", "dryRun", """{"confirm":"charge-payment_error"}""")]
    public async Task A_query_parameter_on_a_move_or_purge_is_a_400_and_nothing_moves(string pathAndQuery, string field, string body)
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");
        await Broker.DeadLetterChargeAsync(Timeout, "y");

        using var content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        using var response = await Admin.PostAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/{pathAndQuery}", UriKind.Relative), content);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ErrorFieldsAsync());
        Assert.Contains("it takes none in its query string", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(2u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeQueue));
    }

    /// <summary>A move's field given twice is named (it was refused as "not valid JSON" under <c>$</c>), and nothing moves.</summary>
    [Theory]
    [InlineData("""{"dryRun":true,"dryRun":false}""", "dryRun", "Is given more than once")]
    [InlineData("""{"filter":{"exceptionType":"A","exceptionType":"B"}}""", "filter", "Holds an object with a field given more than once")]
    public async Task A_move_field_given_twice_is_a_400_naming_it_and_nothing_moves(string body, string field, string why)
    {
        await Broker.DeadLetterChargeAsync(Timeout, "x");

        using var content = new StringContent(body, System.Text.Encoding.UTF8, "application/json");
        using var response = await Admin.PostAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", UriKind.Relative), content);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal([field], await response.ErrorFieldsAsync());
        Assert.Contains(why, await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    private static StringContent JsonContent(object body) =>
        new(JsonSerializer.Serialize(body), System.Text.Encoding.UTF8, "application/json");

    private async Task<(long Messages, long Ready, long Unacknowledged, int Consumers)> ListedAsync(string queue)
    {
        var listed = (await Admin.GetJsonAsync("/api/error-queues")).EnumerateArray().Single(q => q.GetProperty("name").GetString() == queue);
        return (listed.GetProperty("messages").GetInt64(), listed.GetProperty("ready").GetInt64(),
            listed.GetProperty("unacknowledged").GetInt64(), listed.GetProperty("consumers").GetInt32());
    }
}
