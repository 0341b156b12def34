using System.Globalization;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// What <c>/api/operations</c> and <c>/api/audit</c> make of their query parameters, and the times a
/// move's filter records: times with an offset other than UTC's, and parameters given twice.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class OperationQueryTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{
    private const string Timeout = "System.TimeoutException";

    [Theory]
    [InlineData("+01:00")]
    [InlineData("-05:30")]
    public async Task Audit_since_with_an_offset_lists_the_operations_from_that_instant(string offset)
    {
        var id = (await Broker.DeadLetterChargeAsync(Timeout, "timed out")).ToString();
        var operation = await Admin.RunOperationAsync(
            $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter = new { messageIds = new[] { id } } });
        var createdAt = operation.GetProperty("createdAt").GetDateTimeOffset();

        var before = await Admin.GetJsonAsync($"/api/audit?since={Since(createdAt.AddMinutes(-30), offset)}");
        var after = await Admin.GetJsonAsync($"/api/audit?since={Since(createdAt.AddMinutes(30), offset)}");

        Assert.Equal(operation.GetProperty("operationId").GetGuid(), Assert.Single(before.EnumerateArray()).GetProperty("operationId").GetGuid());
        Assert.Empty(after.EnumerateArray());
    }

    [Fact]
    public async Task A_filters_times_with_offsets_match_by_instant_and_are_recorded_in_utc()
    {
        var faultedAt = DateTimeOffset.UtcNow;
        var id = (await Broker.DeadLetterChargeAsync(Timeout, "timed out", faultedAt)).ToString();
        var before = WholeSeconds(faultedAt.AddMinutes(30));
        var after = WholeSeconds(faultedAt.AddMinutes(-30));
        var filter = new
        {
            faultedBefore = before.ToOffset(TimeSpan.FromHours(1)).ToString("O", CultureInfo.InvariantCulture),
            faultedAfter = after.ToOffset(TimeSpan.FromHours(-5)).ToString("O", CultureInfo.InvariantCulture),
        };

        var operation = await Admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { filter });

        Assert.Equal(1, operation.GetProperty("moved").GetInt64());
        Assert.Equal(id, Assert.Single(operation.GetProperty("messageIds").EnumerateArray()).GetString());
        var recorded = Assert.Single((await Admin.GetJsonAsync("/api/audit")).EnumerateArray()).GetProperty("filter");
        var recordedBefore = recorded.GetProperty("faultedBefore").GetDateTimeOffset();
        var recordedAfter = recorded.GetProperty("faultedAfter").GetDateTimeOffset();
        Assert.Equal((before, TimeSpan.Zero), (recordedBefore, recordedBefore.Offset));
        Assert.Equal((after, TimeSpan.Zero), (recordedAfter, recordedAfter.Offset));
    }

    /// <summary>Read as a move's filter reads its times: 12/01/2026 is not taken for the 1st of December (or the 12th of January).</summary>
    [Theory]
    [InlineData("12/01/2026")]
    [InlineData("12/01/2026 06:00:00")]
    [InlineData("2026-12-01")]
    [InlineData("yesterday")]
    public async Task Audit_since_that_is_not_an_iso_8601_date_and_time_is_a_400_naming_it(string since)
    {
        using var response = await Admin.GetAsync(new Uri($"/api/audit?since={Uri.EscapeDataString(since)}", UriKind.Relative));

        Assert.Equal(["since"], await response.ErrorFieldsAsync());
    }

    [Theory]
    [InlineData("/api/operations?queue=charge-payment_error&queue=deliver-webhook_error", "queue")]
    [InlineData("/api/operations?queue=charge-payment_error&Queue=charge-payment_error", "queue")]
    [InlineData("/api/operations?state=running&state=failed", "state")]
    [InlineData("/api/operations?limit=5&limit=5", "limit")]
    [InlineData("/api/audit?queue=charge-payment_error&queue=deliver-webhook_error", "queue")]
    [InlineData("/api/audit?requestedBy=ops-admin&requestedBy=someone-else", "requestedBy")]
    [InlineData("/api/audit?since=2026-01-01T00:00:00Z&since=2026-02-01T00:00:00Z", "since")]
    [InlineData("/api/audit?before=0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182&before=0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182", "before")]
    public async Task A_query_parameter_given_twice_is_a_400_naming_it(string path, string parameter)
    {
        using var response = await Admin.GetAsync(new Uri(path, UriKind.Relative));

        // Named as the query string spells it: which spelling, when it has two, is the parser's choice.
        Assert.Equal(parameter, Assert.Single(await response.ErrorFieldsAsync()), ignoreCase: true);
    }

    /// <summary>
    /// Both listings show at most 500 entries, newest first; before, nothing reached the older ones (a since only
    /// narrowed the newest 500), so most of a busy audit trail could not be read at all.
    /// </summary>
    [Theory]
    [InlineData("/api/audit")]
    [InlineData("/api/operations")]
    public async Task Every_entry_is_listed_page_by_page_with_before_set_to_the_last_id_of_the_previous_page(string path)
    {
        var ids = new List<Guid>();
        for (var i = 0; i < 5; i++)
        {
            var operation = await Admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true });
            ids.Insert(0, operation.GetProperty("operationId").GetGuid());
        }

        var listed = new List<Guid>();
        var query = $"{path}?limit=2";
        while (true)
        {
            var page = (await Admin.GetJsonAsync(query)).EnumerateArray().Select(o => o.GetProperty("operationId").GetGuid()).ToList();
            Assert.InRange(page.Count, 0, 2);
            listed.AddRange(page);
            if (page.Count < 2 || listed.Count > ids.Count)
            {
                break;
            }

            query = $"{path}?limit=2&before={page[^1]}";
        }

        Assert.Equal(ids, listed);

        using var unknown = await Admin.GetAsync(new Uri($"{path}?before={Guid.NewGuid()}", UriKind.Relative));
        Assert.Equal(["before"], await unknown.ErrorFieldsAsync());
        using var malformed = await Admin.GetAsync(new Uri($"{path}?before=last", UriKind.Relative));
        Assert.Equal(["before"], await malformed.ErrorFieldsAsync());
    }

    /// <summary><paramref name="instant"/> as a client at <paramref name="offset"/> writes it, escaped for a query string.</summary>
    private static string Since(DateTimeOffset instant, string offset)
    {
        var local = instant.ToOffset(TimeSpan.Parse(offset.TrimStart('+'), CultureInfo.InvariantCulture));
        var text = local.ToString("yyyy-MM-dd'T'HH:mm:ss.fffffffzzz", CultureInfo.InvariantCulture);
        Assert.EndsWith(offset, text, StringComparison.Ordinal);
        return Uri.EscapeDataString(text);
    }

    private static DateTimeOffset WholeSeconds(DateTimeOffset time) =>
        new(time.UtcTicks - (time.UtcTicks % TimeSpan.TicksPerSecond), TimeSpan.Zero);
}
