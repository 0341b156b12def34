using System.Net;
using System.Text;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// Any producer can send a command with headers the worker keeps when it dead-letters it, such as a
/// <c>Conveyor-Fault-History</c> it made up. One such message must not break the inspection of its queue:
/// every peek whose window reached it answered 500, and the dashboard's list of the queue with it.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class HostileHeaderTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    [Fact]
    public async Task A_peek_shows_a_history_it_cannot_embed_as_its_text_and_the_other_messages_as_they_are()
    {
        var hostile = await HostileMessages.DeadLetterAsync(Broker);

        using var response = await Admin.GetAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages?limit=50", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var messages = (await response.JsonAsync()).GetProperty("messages").EnumerateArray()
            .ToDictionary(m => m.GetProperty("messageId").GetString()!);
        Assert.Equal(hostile.All.Count, messages.Count);

        // A history as a move writes it stays JSON, entry by entry.
        var harmless = messages[hostile.Harmless];
        Assert.Equal("The payment gateway answered 400", harmless.GetProperty("exceptionMessage").GetString());
        var entry = Assert.Single(harmless.GetProperty("faultHistory").EnumerateArray());
        Assert.Equal(("System.TimeoutException", "timed out"), (entry.GetProperty("exceptionType").GetString(), entry.GetProperty("message").GetString()));

        // Any other history is shown as the text it came as.
        foreach (var (id, history) in hostile.Histories)
        {
            var shown = messages[id].GetProperty("faultHistory");
            Assert.Equal(JsonValueKind.String, shown.ValueKind);
            Assert.Equal(history, shown.GetString());
        }

        var huge = messages[hostile.HugeHistory].GetProperty("faultHistory").GetString()!;
        Assert.Equal(JobHeaders.MaxFaultHistoryBytes, huge.Length);

        // Huge fault texts come whole; bytes that are no UTF-8 read as replacement characters.
        Assert.Equal(HostileMessages.HugeText, messages[hostile.HugeTexts].GetProperty("exceptionMessage").GetString());
        Assert.Equal(HostileMessages.HugeText, messages[hostile.HugeTexts].GetProperty("stackTrace").GetString());
        Assert.Equal("bad \uFFFD\uFFFD\uFFFD bytes", messages[hostile.BadUtf8].GetProperty("exceptionMessage").GetString());

        // Nothing was taken away.
        Assert.Equal((uint)hostile.All.Count, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task Groups_of_a_queue_with_hostile_headers_count_every_message()
    {
        var hostile = await HostileMessages.DeadLetterAsync(Broker);

        using var response = await Admin.GetAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/groups", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var groups = (await response.JsonAsync()).GetProperty("groups").EnumerateArray().ToList();
        Assert.Equal(hostile.All.Count, groups.Sum(g => g.GetProperty("count").GetInt64()));
        // The example of a huge message is its start, cut between characters, not inside an emoji's pair.
        var example = groups.Single(g => g.GetProperty("exampleMessage").GetString()!.StartsWith('x')).GetProperty("exampleMessage").GetString()!;
        Assert.Equal(HostileMessages.HugeText[..499], example);
    }
    /// <summary>
    /// The fingerprint's message is cut to 1,000 characters after normalising. The cut was made by position, so a
    /// message whose 1,000th character was the first half of an emoji's surrogate pair kept that half alone, which
    /// the answer could only write as a replacement character: the group's normalised message ended in "\uFFFD",
    /// text the fault never had. The example message beside it was already cut between characters.
    /// </summary>
    [Fact]
    public async Task A_groups_normalised_message_is_cut_between_characters()
    {
        var text = new string('x', 999) + "\U0001F600" + new string('y', 100);
        await Broker.DeadLetterChargeAsync("Conveyor.Worker.Failures.PermanentFailureException", text);

        var group = Assert.Single((await Admin.GetJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/groups")).GetProperty("groups").EnumerateArray());

        Assert.Equal(new string('x', 999), group.GetProperty("normalisedMessage").GetString());
        Assert.Equal(text[..500], group.GetProperty("exampleMessage").GetString());
    }
}

/// <summary>Dead-lettered charges with headers another producer could have sent, and one harmless charge.</summary>
internal sealed record HostileMessages(string Harmless, IReadOnlyDictionary<string, string> Histories, string HugeHistory, string HugeTexts, string BadUtf8)
{
    /// <summary>
    /// A fault text far longer than any the worker writes, with an emoji whose surrogate pair straddles
    /// the 500th character, where the groups' example is cut.
    /// </summary>
    public static readonly string HugeText = new string('x', 499) + "\U0001F600" + new string('y', 30_000);

    public IReadOnlyList<string> All => [Harmless, .. Histories.Keys, HugeHistory, HugeTexts, BadUtf8];

    public static async Task<HostileMessages> DeadLetterAsync(TestBroker broker)
    {
        const string Declined = "Conveyor.Worker.Failures.PermanentFailureException";
        var harmless = await broker.DeadLetterChargeAsync(Declined, "The payment gateway answered 400", extraHeaders: History(
            """[{"exceptionType":"System.TimeoutException","message":"timed out","faultedAt":"2026-11-30T10:00:00.0000000+00:00"}]"""));

        string[] histories =
        [
            // A lone surrogate escape: valid JSON, no valid text; no writer writes it.
            """["\ud800"]""",
            """[{"exceptionType":"X","message":"\udc00 alone"}]""",
            """[{"\ud800":"a name that is no text"}]""",
            // Nested to the reader's limit: read, but too deep to write inside the answer.
            Nested(62), Nested(63), Nested(64),
            """[{"exceptionType":"X","message":{"nested":[1,2,3]}}]""",
            """{"exceptionType":"X"}""",
            """not json at all""",
            "[" + string.Join(',', Enumerable.Repeat("""{"message":"m"}""", 6)) + "]",
        ];
        var byId = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var history in histories)
        {
            byId[(await broker.DeadLetterChargeAsync(Declined, "declined", extraHeaders: History(history))).ToString()] = history;
        }

        var hugeHistory = await broker.DeadLetterChargeAsync(Declined, "declined", extraHeaders: History(
            "[" + string.Join(',', Enumerable.Repeat("""{"message":"m"}""", 5_000)) + "]"));
        var hugeTexts = await broker.DeadLetterChargeAsync(Declined, HugeText,
            extraHeaders: new Dictionary<string, object?> { ["MT-Fault-StackTrace"] = HugeText });
        // An encoded surrogate (CESU-8), which UTF-8 forbids.
        var badUtf8 = await broker.DeadLetterChargeAsync(Declined, "declined", extraHeaders: new Dictionary<string, object?>
        {
            ["MT-Fault-Message"] = (byte[])[.. "bad "u8, 0xED, 0xA0, 0x80, .. " bytes"u8],
        });
        return new HostileMessages(harmless.ToString(), byId, hugeHistory.ToString(), hugeTexts.ToString(), badUtf8.ToString());
    }

    private static Dictionary<string, object?> History(string history) => new() { [JobHeaders.FaultHistory] = history };

    private static string Nested(int depth) => new StringBuilder().Append('[', depth).Append(']', depth).ToString();
}
