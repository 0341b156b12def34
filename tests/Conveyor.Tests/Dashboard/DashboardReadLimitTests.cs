using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;
using static Microsoft.Playwright.Assertions;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// The dashboard's reads take from its user's read allowance (RateLimiting:ReadBurst), the same bucket as the user's key.
/// A page opened while it is used up is told 429 for its session: it said nothing and sent the browser to the sign-in
/// page, which sent it straight back (the session is live), each round another read. It now says why and reads again
/// after the Retry-After.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class DashboardReadLimitTests(ConveyorFixture fixture) : DashboardPageTest(fixture)
{
    protected override Task<RunningApp> StartApiAsync()
    {
        var settings = new Dictionary<string, string?>(ErrorQueueKit.ApiSettings())
        {
            // Enough for signing in and the first page's reads; one a second after that.
            ["RateLimiting:ReadPermitsPerSecond"] = "1",
            ["RateLimiting:ReadBurst"] = "5",
        };
        return Fixture.StartApiAsync(settings);
    }

    [Fact]
    public async Task A_page_opened_over_the_read_allowance_says_so_and_loads_once_it_may_read()
    {
        await using var context = await NewContextAsync();
        var page = await SignedInPageAsync(context);

        // The same user reads with its key meanwhile, taking every permit as it comes.
        using var client = TestKeys.Client(Api.BaseAddress, ErrorQueueKit.AdminKey);
        using var stop = new CancellationTokenSource();
        var drain = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var answer = await client.GetAsync(new Uri("/api/jobs?limit=1", UriKind.Relative), CancellationToken.None);
                await Task.Delay(20, CancellationToken.None);
            }
        });
        try
        {
            var signInPages = 0;
            page.Request += (_, request) =>
            {
                if (new Uri(request.Url).AbsolutePath.StartsWith("/dashboard/login", StringComparison.Ordinal))
                {
                    Interlocked.Increment(ref signInPages);
                }
            };

            // The drain takes each permit only once it gets round to it: on a busy machine the page's read of its
            // session can come first and be let through, and that page rightly loads (and is not the page this test
            // is about). Whether it was is seen from the read's own answer, and such a page is opened again, once the
            // drain has the allowance used up again, until its read is refused.
            for (var opened = 1; ; opened++)
            {
                await Eventually.AssertAsync(async () =>
                {
                    using var answer = await client.GetAsync(new Uri("/api/jobs?limit=1", UriKind.Relative));
                    Assert.Equal(System.Net.HttpStatusCode.TooManyRequests, answer.StatusCode);
                });

                var session = await page.RunAndWaitForResponseAsync(
                    () => page.ReloadAsync(),
                    response => new Uri(response.Url).AbsolutePath == "/dashboard/api/session",
                    new() { Timeout = 30_000 });
                if (session.Status == 429)
                {
                    break;
                }

                Assert.True(opened < 10, $"{opened} pages opened, each of whose session reads was let through ({session.Status})");
            }

            await Expect(page.Locator("#banner")).ToContainTextAsync("Too many requests", new() { Timeout = 30_000 });
            Assert.Equal(0, Volatile.Read(ref signInPages));
        }
        finally
        {
            await stop.CancelAsync();
            await drain;
        }

        // Left its permits, the page reads its session after the Retry-After and shows the user.
        await Expect(page.Locator("#who-name")).ToHaveTextAsync(ErrorQueueKit.AdminName, new() { Timeout = 30_000 });
        Assert.EndsWith("/dashboard/", new Uri(page.Url).AbsolutePath, StringComparison.Ordinal);
    }
}
