using System.Text.Json;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// Any broker client can put control characters, NUL among them, into a message id or a header.
/// PostgreSQL stores neither a NUL in text nor a \u0000 in jsonb: moves and purges over such
/// messages must still end and keep their audit record, with the characters written as visible escapes.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class ControlCharacterAuditTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    private const string Timeout = "System.TimeoutException";
    private const string Declined = "Conveyor.Worker.Failures.PermanentFailureException";

    /// <summary>Long enough for a one-message operation, well short of the 30 s after which a stuck one reads interrupted.</summary>
    private static readonly TimeSpan OperationTimeout = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task A_dry_run_move_over_a_message_id_with_a_NUL_ends_and_records_the_id_escaped()
    {
        var plain = (await Broker.DeadLetterChargeAsync(Timeout, "timed out")).ToString();
        await Broker.DeadLetterChargeAsync(Timeout, "timed out", messageId: "\u0000x");

        var operation = await RunAsync("move", new { dryRun = true });

        Assert.Equal("succeeded", operation.GetProperty("state").GetString());
        Assert.Equal(2, operation.GetProperty("matched").GetInt64());
        Assert.Equal([plain, @"\u0000x"], Ids(operation));
        Assert.Equal(2, operation.GetProperty("targets").GetProperty(ErrorQueueKit.ChargeQueue).GetInt64());
        var entry = Assert.Single((await Admin.GetJsonAsync("/api/audit")).EnumerateArray());
        Assert.Equal([plain, @"\u0000x"], Ids(entry));
        Assert.Equal([plain, "\u0000x"], await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task A_move_and_a_purge_of_messages_with_control_characters_in_their_ids_record_counts_and_ids()
    {
        await Broker.DeadLetterChargeAsync(Timeout, "timed out", messageId: "\u0000x");
        await Broker.DeadLetterChargeAsync(Declined, "declined", messageId: "tab\there");

        var move = await RunAsync("move", new { filter = new { exceptionType = Timeout } });

        Assert.Equal(("succeeded", 1), (move.GetProperty("state").GetString(), move.GetProperty("moved").GetInt64()));
        Assert.Equal([@"\u0000x"], Ids(move));
        // Only the record is escaped: the moved message keeps its id as sent.
        Assert.Equal(["\u0000x"], await Broker.IdsAsync(ErrorQueueKit.ChargeQueue));

        var purge = await RunAsync("purge", new { confirm = ErrorQueueKit.ChargeErrors });

        Assert.Equal(("succeeded", 1), (purge.GetProperty("state").GetString(), purge.GetProperty("purged").GetInt64()));
        Assert.Equal([@"tab\u0009here"], Ids(purge));
        Assert.Equal(0u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(2, (await Admin.GetJsonAsync("/api/audit")).GetArrayLength());
    }

    [Fact]
    public async Task A_queue_name_with_a_NUL_from_a_fault_header_is_escaped_in_the_detail_of_the_dry_run_and_of_the_move()
    {
        var headers = new Dictionary<string, object?> { ["MT-Fault-InputAddress"] = "rabbitmq://127.0.0.1/test/gone%00queue" };
        var id = (await Broker.DeadLetterChargeAsync(Timeout, "timed out", extraHeaders: headers)).ToString();

        // A dry run checks the target as the move does, and says the move would fail.
        var dryRun = await RunAsync("move", new { dryRun = true });

        Assert.Equal(("succeeded", 0L, 1L), (
            dryRun.GetProperty("state").GetString(), dryRun.GetProperty("moved").GetInt64(), dryRun.GetProperty("failed").GetInt64()));
        Assert.Contains(@"'gone\u0000queue'", dryRun.GetProperty("detail").GetString(), StringComparison.Ordinal);

        // No such queue: the broker returns the copy, and its reason names the queue.
        var move = await RunAsync("move", new { });

        Assert.Equal(("succeeded", true), (move.GetProperty("state").GetString(), move.GetProperty("partial").GetBoolean()));
        Assert.Equal((0, 1), (move.GetProperty("moved").GetInt64(), move.GetProperty("failed").GetInt64()));
        Assert.Contains(@"'gone\u0000queue'", move.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.Equal([id], await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task A_message_whose_id_has_a_control_character_is_selected_by_the_id_as_the_audit_shows_it()
    {
        await Broker.DeadLetterChargeAsync(Timeout, "timed out", messageId: "\u0000x");
        await Broker.DeadLetterChargeAsync(Timeout, "timed out", messageId: "x");
        var path = $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/purge";
        string[] rawIds = ["\u0000x"];
        string[] escapedIds = [@"\u0000x"];

        // A request cannot carry the raw id: PostgreSQL could not store it with the operation's filter.
        using (var raw = await Admin.PostJsonAsync(path, new { filter = new { messageIds = rawIds }, confirm = ErrorQueueKit.ChargeErrors }))
        {
            Assert.Equal(["filter.messageIds"], await raw.ErrorFieldsAsync());
        }

        var purge = await RunAsync("purge", new { filter = new { messageIds = escapedIds }, confirm = ErrorQueueKit.ChargeErrors });

        Assert.Equal(("succeeded", 1), (purge.GetProperty("state").GetString(), purge.GetProperty("purged").GetInt64()));
        Assert.Equal([@"\u0000x"], Ids(purge));
        Assert.Equal(["x"], await Broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    private Task<JsonElement> RunAsync(string kind, object body) =>
        Admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/{kind}", body, OperationTimeout);

    private static List<string?> Ids(JsonElement operation) =>
        [.. operation.GetProperty("messageIds").EnumerateArray().Select(i => i.GetString())];
}
