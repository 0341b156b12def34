using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// A move or purge can name messages only by their ids, and an error queue may hold several messages
/// with one id (duplicate publishes, redeliveries, or a hostile producer's choice). What an operator
/// selects in the browser, and what the dialog counts, is what is acted on: the shown messages with
/// that id, together, and never one further down the queue the operator has not seen.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class DashboardSelectionTests(ConveyorFixture fixture) : DashboardPageTest(fixture)
{
    private const string SharedId = "shared-id-0001";
    private static readonly LocatorAssertionsToHaveTextOptions Patiently = new() { Timeout = 60_000 };

    protected override Task BeforeApiStartsAsync() => ErrorQueueKit.ClearOperationsAsync(Fixture);

    [Fact]
    public async Task Purging_a_selected_message_whose_id_others_share_purges_the_shown_ones_counted_and_no_later_one()
    {
        // Shown (the page shows the first 50): the shared id 1st and 3rd. Not shown: the shared id again, 55th.
        await using var broker = await TestBroker.ConnectAsync(Fixture);
        await broker.DeclareAsync(ErrorQueueKit.ChargeErrors);
        await broker.DeadLetterChargeAsync("System.TimeoutException", "first", messageId: SharedId);
        await broker.DeadLetterChargeAsync("System.TimeoutException", "second");
        await broker.DeadLetterChargeAsync("System.TimeoutException", "third", messageId: SharedId);
        for (var i = 0; i < 51; i++)
        {
            await broker.DeadLetterChargeAsync("System.TimeoutException", $"filler {i}");
        }

        await broker.DeadLetterChargeAsync("System.TimeoutException", "unseen", messageId: SharedId);
        Assert.Equal(55u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));

        await using var context = await NewContextAsync();
        var page = await SignedInPageAsync(context);
        await page.GotoAsync(new Uri(Api.BaseAddress, $"/dashboard/#/error-queues/{ErrorQueueKit.ChargeErrors}").ToString());
        var shared = page.Locator($"#messages tr[data-message-id='{SharedId}']");
        await Expect(shared).ToHaveCountAsync(2, new LocatorAssertionsToHaveCountOptions { Timeout = 60_000 });

        // Ticking one ticks both, and the count is of messages.
        await shared.First.Locator("input[type=checkbox]").ClickAsync();
        await Expect(shared.Nth(1).Locator("input[type=checkbox]")).ToBeCheckedAsync();
        await Expect(page.Locator("#purge-selected")).ToHaveTextAsync("Purge selected (2)");
        await Expect(page.Locator("#selection-note")).ToContainTextAsync("selected together");

        await page.ClickAsync("#purge-selected");
        await Expect(page.Locator("#dialog")).ToContainTextAsync("2 selected message(s)");
        await page.FillAsync("#dialog-input", ErrorQueueKit.ChargeErrors);
        await page.ClickAsync("#dialog-confirm");
        await Expect(page.Locator("#operation-state")).ToHaveTextAsync("succeeded", Patiently);
        await Expect(page.Locator("#operation-numbers")).ToContainTextAsync("purged 2");

        // The unseen one is still there, and nothing else went. The page inspects the queue again after the
        // operation, holding its messages for a moment: the queue is read once that is over.
        await Expect(page.Locator("#queue-depth")).ToHaveTextAsync("53", Patiently);
        await page.CloseAsync();
        await Eventually.AssertAsync(async () =>
        {
            var ids = await broker.IdsAsync(ErrorQueueKit.ChargeErrors);
            Assert.Equal(53, ids.Count);
            Assert.Equal(1, ids.Count(id => id == SharedId));
            Assert.Equal(SharedId, ids[^1]);
        });
    }

    /// <summary>
    /// A purge of messages whose jobs' rows were swept says what the operator loses: the last record of those jobs.
    /// It used to say, as after a move, that moving them back runs those jobs again, which a purge never does.
    /// </summary>
    [Fact]
    public async Task A_purge_of_messages_whose_jobs_rows_are_gone_says_it_deletes_their_last_record()
    {
        await using var broker = await TestBroker.ConnectAsync(Fixture);
        await broker.DeclareAsync(ErrorQueueKit.ChargeErrors);
        await broker.DeadLetterChargeAsync("System.TimeoutException", "swept job", messageId: SharedId,
            extraHeaders: new Dictionary<string, object?> { [Conveyor.Contracts.JobHeaders.JobId] = Guid.NewGuid().ToString() });

        await using var context = await NewContextAsync();
        var page = await SignedInPageAsync(context);
        await page.GotoAsync(new Uri(Api.BaseAddress, $"/dashboard/#/error-queues/{ErrorQueueKit.ChargeErrors}").ToString());
        var row = page.Locator($"#messages tr[data-message-id='{SharedId}']");
        await Expect(row).ToHaveCountAsync(1, new LocatorAssertionsToHaveCountOptions { Timeout = 60_000 });
        await row.Locator("input[type=checkbox]").ClickAsync();
        await page.ClickAsync("#purge-selected");
        await page.FillAsync("#dialog-input", ErrorQueueKit.ChargeErrors);
        await page.ClickAsync("#dialog-confirm");

        await Expect(page.Locator("#operation-state")).ToHaveTextAsync("succeeded", Patiently);
        var numbers = page.Locator("#operation-numbers");
        await Expect(numbers).ToContainTextAsync("purged 1");
        await Expect(numbers).ToContainTextAsync("jobs missing 1 (their rows were swept: these messages were their last record");
        await Expect(numbers).Not.ToContainTextAsync("runs those jobs again");
        Assert.Equal(0u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }
}
