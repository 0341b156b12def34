using System.Text;
using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.Api.Security;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>Fingerprints, filters, fresh copies, queue names and key checks: pure logic, no servers.</summary>
public sealed class ErrorQueueLogicTests
{
    [Theory]
    [InlineData("Payment 0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11 failed after 3 tries", "Payment {guid} failed after {n} tries")]
    [InlineData("Charge ch_8f3a2b9c0d1e4f56 declined", "Charge ch_{hex} declined")]
    [InlineData("  Timeout\r\n after   30s ", "Timeout after {n}s")]
    [InlineData("Account acct-42 not found", "Account acct-{n} not found")]
    [InlineData("deadbeef is a word, not an id", "deadbeef is a word, not an id")]
    [InlineData("Customer cus_NffrFeUfNV2Hib not found", "Customer cus_{id} not found")]
    [InlineData("Token eyJhbGciOiJIUzI1 expired; utf8 and Http2 stay", "Token {id} expired; utf{n} and Http{n} stay")]
    [InlineData(null, "")]
    public void Fault_messages_are_normalised_before_grouping(string? message, string expected) =>
        Assert.Equal(expected, FaultFingerprint.Normalise(message));

    [Fact]
    public void The_group_id_is_stable_short_and_separates_exception_types()
    {
        var a = FaultFingerprint.GroupId("System.TimeoutException", "No answer after 30 seconds");
        var b = FaultFingerprint.GroupId("System.TimeoutException", "No answer after 45 seconds");
        var c = FaultFingerprint.GroupId("System.IO.IOException", "No answer after 30 seconds");

        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        Assert.Matches("^[0-9a-f]{12}$", a);
    }

    [Fact]
    public void Long_messages_that_differ_only_in_an_early_number_or_id_share_a_group()
    {
        var tail = string.Concat(Enumerable.Repeat("the gateway said no. ", 60));
        var a = FaultFingerprint.GroupId("System.Exception", $"order 7 ({Guid.NewGuid()}): {tail}");
        var b = FaultFingerprint.GroupId("System.Exception", $"order 1234567 ({Guid.NewGuid()}): {tail}");

        Assert.Equal(a, b);
        Assert.Equal(1000, FaultFingerprint.Normalise($"order 7: {tail}").Length);
    }

    [Fact]
    public void Grouping_keeps_at_most_max_groups_and_counts_the_messages_left_out()
    {
        var visitor = new GroupsVisitor();
        string Word(int i) => string.Concat(i.ToString("D5", System.Globalization.CultureInfo.InvariantCulture).Select(d => (char)('a' + d - '0')));
        FaultedMessage Fault(int i) => new() { MessageId = $"m-{i}", ExceptionType = "KeyNotFoundException", ExceptionMessage = $"no key {Word(i)}" };

        for (var i = 0; i < GroupsVisitor.MaxGroups + 50; i++)
        {
            Assert.Equal(WalkAction.Keep, visitor.Decide(Fault(i), null).Action);
        }

        // Messages of a group that exists are still counted in it.
        visitor.Decide(Fault(3), null);

        Assert.Equal(GroupsVisitor.MaxGroups, visitor.Groups.Count());
        Assert.Equal(50, visitor.Ungrouped);
        Assert.Equal(2, visitor.Groups.Single(g => g.GroupId == Fault(3).GroupId).Count);
    }

    [Fact]
    public void A_filter_matches_only_when_every_condition_holds()
    {
        var at = new DateTimeOffset(2026, 11, 20, 12, 0, 0, TimeSpan.Zero);
        var message = new FaultedMessage
        {
            MessageId = "m-1",
            MessageType = "Conveyor.Contracts.Payments.ChargePayment",
            ExceptionType = "System.TimeoutException",
            ExceptionMessage = "late",
            FaultedAt = at,
        };

        Assert.True(MessageFilter.All.Matches(message));
        Assert.True(new MessageFilter { ExceptionType = "timeoutexception", MessageType = "ChargePayment" }.Matches(message));
        Assert.True(new MessageFilter { MessageIds = new HashSet<string> { "m-1", "m-2" } }.Matches(message));
        Assert.True(new MessageFilter { FaultedAfter = at, FaultedBefore = at.AddSeconds(1) }.Matches(message));
        Assert.True(new MessageFilter { GroupId = message.GroupId.ToUpperInvariant() }.Matches(message));
        Assert.False(new MessageFilter { FaultedBefore = at }.Matches(message));
        Assert.False(new MessageFilter { ExceptionType = "System.TimeoutException", MessageIds = new HashSet<string> { "m-2" } }.Matches(message));
        Assert.False(new MessageFilter { MessageType = "DeliverWebhook" }.Matches(message));
        Assert.False(new MessageFilter { FaultedAfter = at }.Matches(message with { FaultedAt = null }));
    }

    [Fact]
    public void A_fresh_copy_keeps_identity_and_contract_headers_drops_fault_bookkeeping_and_records_history()
    {
        var earlier = JsonSerializer.Serialize(Enumerable.Range(0, 5).Select(i => new { exceptionType = "E" + i, message = "m", faultedAt = (string?)null }));
        var original = new BasicProperties
        {
            MessageId = "msg-1",
            ContentType = "application/vnd.masstransit+json",
            UserId = "someone-else",
            Expiration = "60000",
            Headers = new Dictionary<string, object?>
            {
                ["Conveyor-Job-Id"] = Encoding.UTF8.GetBytes("job-1"),
                ["MT-Fault-ExceptionType"] = Encoding.UTF8.GetBytes("System.TimeoutException"),
                ["MT-Fault-Message"] = Encoding.UTF8.GetBytes(new string('x', 1000)),
                ["MT-Reason"] = Encoding.UTF8.GetBytes("fault"),
                ["MT-Host-MachineName"] = Encoding.UTF8.GetBytes("worker-7"),
                ["MT-Host-ProcessId"] = Encoding.UTF8.GetBytes("4242"),
                ["x-death"] = new List<object>(),
                ["Conveyor-Redelivery-Attempt"] = Encoding.UTF8.GetBytes("3"),
                ["Conveyor-Attempts"] = Encoding.UTF8.GetBytes("4"),
                ["Conveyor-Fault-History"] = Encoding.UTF8.GetBytes(earlier),
                // Times deferred in the last attempt: a moved copy starts a fresh budget of those too.
                ["Conveyor-Lease-Deferrals"] = Encoding.UTF8.GetBytes("2"),
                ["Conveyor-Lease-Deferrals-Seal"] = Encoding.UTF8.GetBytes("sealed-by-a-worker"),
                ["Conveyor-Origin-Deferrals"] = Encoding.UTF8.GetBytes("12"),
            },
        };
        var message = FaultedMessage.Read(original, "{}"u8);

        var copy = FreshCopy.Build(original, message, "charge-payment_error", Guid.Empty);

        Assert.Equal(("msg-1", "application/vnd.masstransit+json", DeliveryModes.Persistent), (copy.MessageId, copy.ContentType, copy.DeliveryMode));
        Assert.Null(copy.UserId);
        Assert.Null(copy.Expiration);
        Assert.Equal(
            ["Conveyor-Fault-History", "Conveyor-Job-Id", "Conveyor-Moved-By-Operation", "Conveyor-Moved-From"],
            copy.Headers!.Keys.Order(StringComparer.Ordinal));
        var history = JsonDocument.Parse((string)copy.Headers["Conveyor-Fault-History"]!).RootElement.EnumerateArray().ToList();
        Assert.Equal(FreshCopy.HistoryLength, history.Count);
        Assert.Equal("E1", history[0].GetProperty("exceptionType").GetString());
        Assert.Equal("System.TimeoutException", history[^1].GetProperty("exceptionType").GetString());
        Assert.Equal(FreshCopy.HistoryMessageChars, history[^1].GetProperty("message").GetString()!.Length);
    }

    [Fact]
    public void A_moved_copys_fault_history_stays_within_its_byte_bound_whatever_the_earlier_history_carried()
    {
        // Earlier entries are carried as they came: someone else's may be large. Control characters take
        // six bytes each once escaped, so this fault's own entry is at its largest too.
        var earlier = JsonSerializer.Serialize(Enumerable.Range(0, 4).Select(i => new { exceptionType = "E" + i, message = new string('m', 3_000) }));
        var original = new BasicProperties
        {
            MessageId = "msg-2",
            Headers = new Dictionary<string, object?>
            {
                ["MT-Fault-ExceptionType"] = Encoding.UTF8.GetBytes(new string('\u0001', 5_000)),
                ["MT-Fault-Message"] = Encoding.UTF8.GetBytes(new string('\u0002', 5_000)),
                ["Conveyor-Fault-History"] = Encoding.UTF8.GetBytes(earlier),
            },
        };
        var message = FaultedMessage.Read(original, "{}"u8);

        var history = (string)FreshCopy.Build(original, message, "charge-payment_error", Guid.Empty).Headers!["Conveyor-Fault-History"]!;

        Assert.True(Encoding.UTF8.GetByteCount(history) <= Contracts.JobHeaders.MaxFaultHistoryBytes, $"{Encoding.UTF8.GetByteCount(history)} bytes");
        var entries = JsonDocument.Parse(history).RootElement.EnumerateArray().ToList();
        // The oldest went first; this fault, cut to its lengths, is always kept.
        Assert.Equal(["E3", new string('\u0001', FreshCopy.HistoryTypeChars)], entries.Select(e => e.GetProperty("exceptionType").GetString()));
        Assert.Equal(new string('\u0002', FreshCopy.HistoryMessageChars), entries[^1].GetProperty("message").GetString());
    }

    [Theory]
    [InlineData("rabbitmq://127.0.0.1/conveyor/charge-payment", "charge-payment_error", "charge-payment")]
    [InlineData("rabbitmq://broker/vhost%2Fx/charge-payment?bind=true", "x_error", "charge-payment")]
    [InlineData(null, "deliver-webhook_skipped", "deliver-webhook")]
    [InlineData("not a uri", "generate-report_error", "generate-report")]
    [InlineData("rabbitmq://broker/v/other_error", "generate-report_error", "generate-report")]
    public void The_original_queue_comes_from_the_input_address_else_the_error_queue_name(string? input, string errorQueue, string expected) =>
        Assert.Equal(expected, ErrorQueueNames.OriginalQueueOf(input, errorQueue));

    [Theory]
    [InlineData("charge-payment_error", true)]
    [InlineData("charge-payment_skipped", true)]
    [InlineData("charge-payment", false)]
    [InlineData("_error", false)]
    public void Only_error_and_skipped_queues_qualify(string queue, bool expected) =>
        Assert.Equal(expected, ErrorQueueNames.IsErrorOrSkipped(queue));

    [Fact]
    public void Skipped_messages_get_their_id_and_type_from_the_envelope()
    {
        var body = """{"messageId":"abc","headers":{"messageType":"no"},"messageType":["urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook","urn:message:Other"],"message":{}}"""u8;

        var message = FaultedMessage.Read(new BasicProperties(), body);

        Assert.Equal(("abc", "Conveyor.Contracts.Webhooks.DeliverWebhook"), (message.MessageId, message.MessageType));
        Assert.Null(FaultedMessage.Read(new BasicProperties(), "not json"u8).MessageId);
    }

    [Fact]
    public void An_envelope_whose_id_or_type_is_no_valid_text_is_read_as_if_it_had_none()
    {
        // Well-formed JSON, but a lone surrogate escape is no UTF-16 text: the reader refuses to make a string of it.
        var badId = FaultedMessage.Read(new BasicProperties(), """{"messageId":"\ud800x","messageType":["urn:message:A:B"]}"""u8);
        var badType = FaultedMessage.Read(new BasicProperties(), """{"messageId":"abc","messageType":["urn:message:\udc00"]}"""u8);

        Assert.Equal((null, null), (badId.MessageId, badId.MessageType));
        Assert.Equal(("abc", null), (badType.MessageId, badType.MessageType));
    }

    [Theory]
    [InlineData(new byte[] { 0x00, 0x7B, 0x22 })]
    [InlineData(new byte[] { 0xFF, 0xFE })]
    [InlineData(new byte[] { 0x5B, 0x5D })]
    [InlineData(new byte[] { 0x7B, 0x22, 0x6D })]
    [InlineData(new byte[] { 0x20, 0x0A })]
    [InlineData(new byte[0])]
    public void Bodies_that_are_no_envelope_give_no_id_or_type(byte[] body)
    {
        var message = FaultedMessage.Read(new BasicProperties(), body);

        Assert.Equal((null, null), (message.MessageId, message.MessageType));
        Assert.Equal(body.Length, message.BodyBytes);
    }

    [Fact]
    public void An_envelope_after_leading_whitespace_is_still_read()
    {
        var body = " \r\n\t{\"messageId\":\"abc\",\"messageType\":[\"urn:message:Conveyor.Contracts.Payments:ChargePayment\"]}"u8;

        var message = FaultedMessage.Read(new BasicProperties(), body);

        Assert.Equal(("abc", "Conveyor.Contracts.Payments.ChargePayment"), (message.MessageId, message.MessageType));
    }

    [Fact]
    public void Keys_are_found_by_value_and_scopes_read_from_a_string_or_a_list()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Name"] = "ops",
            ["Auth:ApiKeys:0:Key"] = "k0-0123456789abcdefghijklmnop",
            ["Auth:ApiKeys:0:Scopes"] = "admin, jobs:read",
            ["Auth:ApiKeys:1:Name"] = "svc",
            ["Auth:ApiKeys:1:Key"] = "k1-0123456789abcdefghijklmnop",
            ["Auth:ApiKeys:1:Scopes:0"] = "jobs:publish",
        }).Build();
        var options = ApiKeyOptions.From(configuration);
        var store = new ApiKeyStore(Options.Create(options));

        Assert.Empty(options.Validate());
        Assert.Equal(["admin", "jobs:read"], store.Find("k0-0123456789abcdefghijklmnop")!.Scopes);
        Assert.Equal("svc", store.Find("k1-0123456789abcdefghijklmnop")!.Name);
        Assert.Null(store.Find("k1-0123456789abcdefghijklmno"));
        Assert.Null(store.Find(""));
        Assert.DoesNotContain("k0-", options.ApiKeys[0].ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Short_nameless_scopeless_and_duplicate_keys_are_refused()
    {
        var options = new ApiKeyOptions
        {
            ApiKeys =
            [
                new ApiKeyEntry("Auth:ApiKeys:0", "", "short", []),
                new ApiKeyEntry("Auth:ApiKeys:1", "a", "same-0123456789abcdefghijklmnop", ["admin"]),
                new ApiKeyEntry("Auth:ApiKeys:2", "a", "same-0123456789abcdefghijklmnop", ["admin"]),
            ],
        };

        var problems = options.Validate().ToList();

        Assert.Equal(5, problems.Count);
        Assert.DoesNotContain(problems, p => p.Contains("same-0123", StringComparison.Ordinal) || p.Contains("short", StringComparison.Ordinal));
    }

    /// <summary>
    /// A move keeps at most <see cref="OperationVisitor.MaxJobIdsKept"/> distinct job ids to check
    /// (bounded memory over any queue), says when it left some out, and counts a job once however many
    /// of its messages it moved; a message without a job id, or with one that is not a UUID, adds none.
    /// </summary>
    [Fact]
    public void A_move_keeps_a_bounded_set_of_distinct_job_ids_and_says_when_it_left_some_out()
    {
        var visitor = new OperationVisitor(new OperationPlan(
            Conveyor.Storage.Operations.ErrorQueueOperationKinds.Move, "q_error", MessageFilter.All, null, null, false, Guid.NewGuid(), 10));
        var repeated = Guid.NewGuid().ToString();
        visitor.Completed(new FaultedMessage { JobId = repeated }, WalkOutcome.Forwarded, "q", null);
        visitor.Completed(new FaultedMessage { JobId = repeated }, WalkOutcome.Forwarded, "q", null);
        visitor.Completed(new FaultedMessage(), WalkOutcome.Forwarded, "q", null);
        visitor.Completed(new FaultedMessage { JobId = "not-a-uuid" }, WalkOutcome.Forwarded, "q", null);

        Assert.Equal((1, false), (visitor.JobIds().Ids.Count, visitor.JobIds().Partial));

        for (var i = 0; i < OperationVisitor.MaxJobIdsKept; i++)
        {
            visitor.Completed(new FaultedMessage { JobId = Guid.NewGuid().ToString() }, WalkOutcome.Forwarded, "q", null);
        }

        var (ids, partial) = visitor.JobIds();
        Assert.Equal(OperationVisitor.MaxJobIdsKept, ids.Count);
        Assert.True(partial);
    }
}
