using System.Text.RegularExpressions;
using Conveyor.Tests.Infrastructure;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// The dashboard's address after <c>#</c> is the user's to edit, and a truncated or hand-made link can
/// hold percent-encoding that does not decode. The page says so, instead of leaving the view it showed
/// before (no longer refreshed) with nothing to tell why; and a good address works again afterwards.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class DashboardAddressTests(ConveyorFixture fixture) : DashboardPageTest(fixture)
{
    private static readonly LocatorAssertionsToHaveTextOptions Patiently = new() { Timeout = 60_000 };


    [Fact]
    public async Task An_address_that_does_not_decode_says_so_and_the_next_good_one_works()
    {
        await using var context = await NewContextAsync(new BrowserNewContextOptions());
        var page = await SignedInPageAsync(context);
        await page.GotoAsync(new Uri(Api.BaseAddress, "/dashboard/#/error-queues").ToString());
        await Expect(page.Locator("[data-nav='error-queues']")).ToHaveClassAsync(new Regex("active"), new() { Timeout = 60_000 });

        // Changed in place, as a user editing the address bar does (a hashchange, no reload).
        await page.EvaluateAsync("() => { window.location.hash = '#/jobs/%E0%A4%A'; }");
        await Expect(page.Locator("#bad-address h1")).ToHaveTextAsync("Not a valid address", Patiently);
        await Expect(page.Locator("#bad-address")).ToContainTextAsync("#/jobs/%E0%A4%A");

        // Loaded as such, too.
        await page.ReloadAsync();
        await Expect(page.Locator("#bad-address h1")).ToHaveTextAsync("Not a valid address", Patiently);

        await page.ClickAsync("#bad-address a");
        await Expect(page.Locator("#bad-address")).ToHaveCountAsync(0, new LocatorAssertionsToHaveCountOptions { Timeout = 60_000 });
        await Expect(page.Locator("[data-nav='overview']")).ToHaveClassAsync(new Regex("active"), new() { Timeout = 60_000 });
    }
}
