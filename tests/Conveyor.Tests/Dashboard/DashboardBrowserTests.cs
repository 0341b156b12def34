using System.Net;
using Conveyor.Contracts;
using Conveyor.Tests.Api;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// An operator in a real (headless) browser: signs in with a key, sees the charges the worker
/// dead-lettered, reads one, moves their group back once the gateway heals, and watches the counts fall.
/// Screenshots of each step go to artifacts/test-results/screenshots.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class DashboardBrowserTests(ConveyorFixture fixture) : DashboardPageTest(fixture)
{
    private const int Charges = 6;
    private static readonly LocatorAssertionsToHaveTextOptions Patiently = new() { Timeout = 60_000 };

    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;
    private readonly List<string> _browserErrors = [];

    public override async Task DisposeAsync()
    {
        await base.DisposeAsync();
        await _worker.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    protected override async Task BeforeApiStartsAsync()
    {
        await ErrorQueueKit.ClearOperationsAsync(Fixture);
        _gateway = await FakePaymentGateway.StartAsync();
        _worker = await Fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
    }

    protected override Task<RunningApp> StartApiAsync() => Fixture.StartApiAsync();

    [Fact]
    public async Task An_operator_moves_a_dead_lettered_group_back_and_watches_the_counts_change()
    {
        // A 400 is permanent: each charge is dead-lettered after one attempt.
        _gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        var jobs = new List<Guid>();
        var paymentIds = new List<Guid>();
        for (var i = 0; i < Charges; i++)
        {
            paymentIds.Add(Guid.NewGuid());
            jobs.Add((await Api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentIds[^1]))).JobId);
        }

        await using (var broker = await TestBroker.ConnectAsync(Fixture))
        {
            await Eventually.AssertAsync(async () => Assert.Equal((uint)Charges, await broker.CountAsync(ErrorQueueKit.ChargeErrors)));
        }

        await using var context = await NewContextAsync();
        var page = await context.NewPageAsync();
        page.Console += (_, message) =>
        {
            if (message.Type == "error")
            {
                _browserErrors.Add($"{message.Text} ({message.Location})");
            }
        };
        page.PageError += (_, error) => _browserErrors.Add(error);
        // Whether each read of the overview was marked as the page's own refresh (not counted as activity).
        var overviewReads = new System.Collections.Concurrent.ConcurrentQueue<bool>();
        page.Request += (_, request) =>
        {
            if (request.Url.EndsWith("/dashboard/api/overview", StringComparison.Ordinal))
            {
                overviewReads.Enqueue(request.Headers.ContainsKey("x-conveyor-refresh"));
            }
        };
        page.Response += (_, response) =>
        {
            if (response.Status >= 400)
            {
                _browserErrors.Add($"{response.Status} {response.Request.Method} {response.Url}");
            }
        };

        // Signed out: the dashboard sends the browser to the sign-in form.
        await page.GotoAsync(new Uri(Api.BaseAddress, "/dashboard/").ToString());
        await Expect(page).ToHaveURLAsync(new Uri(Api.BaseAddress, "/dashboard/login").ToString());
        await page.FillAsync("#apiKey", TestKeys.Admin);
        await Screenshot(page, "01-sign-in");
        await page.ClickAsync("#sign-in");

        // Overview: the error queue holds every charge.
        await Expect(page.Locator("#who-name")).ToHaveTextAsync(TestKeys.AdminName, Patiently);
        var overviewErrors = page.Locator($"#overview tr[data-queue='{ErrorQueueKit.ChargeErrors}'] td[data-col='messages']");
        await Expect(overviewErrors).ToHaveTextAsync(Charges.ToString(System.Globalization.CultureInfo.InvariantCulture), Patiently);
        await Screenshot(page, "02-overview");

        // The error queue: one group of N, N messages, one opened.
        await page.ClickAsync($"#overview a:text-is('{ErrorQueueKit.ChargeErrors}')");
        var groupCount = page.Locator("#groups tr[data-group-id] td[data-col='count']");
        await Expect(groupCount).ToHaveTextAsync(Charges.ToString(System.Globalization.CultureInfo.InvariantCulture), Patiently);
        await Expect(page.Locator("#messages tr[data-message-id]")).ToHaveCountAsync(Charges);
        await Expect(page.Locator("#queue-depth")).ToHaveTextAsync(Charges.ToString(System.Globalization.CultureInfo.InvariantCulture), Patiently);
        await page.Locator("#messages tr[data-message-id]").First.ClickAsync();
        await Expect(page.Locator("#message-body")).ToContainTextAsync("paymentId", new LocatorAssertionsToContainTextOptions { IgnoreCase = true });
        await Expect(page.Locator("#message-detail")).ToContainTextAsync("charge-payment");
        // The message links to its job.
        Assert.Contains(Guid.Parse(await page.Locator("#message-job").InnerTextAsync()), jobs);
        await Screenshot(page, "03-error-queue-and-message");

        // Heal the gateway, then move the group back through the confirmation step.
        _gateway.FailEverythingWith = null;
        await page.ClickAsync("#groups button.move-group");
        await Expect(page.Locator("#dialog")).ToBeVisibleAsync();
        await Screenshot(page, "04-confirm-move");
        await page.ClickAsync("#dialog-confirm");
        await Expect(page.Locator("#operation-state")).ToHaveTextAsync("succeeded", Patiently);
        await Expect(page.Locator("#operation-numbers")).ToContainTextAsync($"moved {Charges}");
        await Expect(page.Locator("#queue-depth")).ToHaveTextAsync("0", Patiently);
        await Screenshot(page, "05-moved");

        // The charges go through, and the overview shows the error queue empty.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = Fixture.CreateDbContext();
            Assert.Equal(Charges, await db.Ledger.CountAsync());
        });
        await page.ClickAsync("nav a[data-nav='overview']");
        await Expect(overviewErrors).ToHaveTextAsync("0", Patiently);
        await Screenshot(page, "06-overview-after-move");
        // Opening the overview is the operator's doing; its refreshes every few seconds are the page's own.
        Assert.False(overviewReads.First(), "the first read of the overview was marked as a refresh");
        await Eventually.AssertAsync(() => Assert.Contains(true, overviewReads));

        // Jobs: the list filtered to succeeded jobs, and one job's timeline.
        await page.ClickAsync("nav a[data-nav='jobs']");
        await page.SelectOptionAsync("#status-filter", "succeeded");
        await Expect(page.Locator("#jobs tr[data-job-id]")).ToHaveCountAsync(Charges, new LocatorAssertionsToHaveCountOptions { Timeout = 60_000 });
        await Screenshot(page, "07-jobs");
        await page.FillAsync("#job-id", jobs[0].ToString());
        await page.ClickAsync("#job-lookup button[type='submit']");
        await Expect(page.Locator("#job-status")).ToHaveTextAsync("succeeded", Patiently);
        await Expect(page.Locator("#job")).ToContainTextAsync("Finished");
        // A succeeded job shows its result: the charge the gateway made.
        await using (var db = Fixture.CreateDbContext())
        {
            var charged = await db.Ledger.SingleAsync(l => l.PaymentId == paymentIds[0]);
            await Expect(page.Locator("#job-result")).ToContainTextAsync(charged.GatewayChargeId);
            await Expect(page.Locator("#job-result")).ToContainTextAsync("1250 EUR (minor units)");
        }

        await Screenshot(page, "08-job-timeline");

        // The lookup also finds a job by its command's business key (a charge's paymentId).
        await page.ClickAsync("nav a[data-nav='jobs']");
        await page.SelectOptionAsync("#lookup-by", "key");
        await page.FillAsync("#job-id", paymentIds[1].ToString());
        await page.ClickAsync("#job-lookup button[type='submit']");
        await Expect(page.Locator("#job-business-key")).ToHaveTextAsync(paymentIds[1].ToString(), Patiently);
        await Expect(page.Locator("#job h1")).ToContainTextAsync(jobs[1].ToString());
        await page.ClickAsync("nav a[data-nav='jobs']");
        await page.SelectOptionAsync("#lookup-by", "key");
        await page.FillAsync("#job-id", "no-such-key");
        await page.ClickAsync("#job-lookup button[type='submit']");
        await Expect(page.Locator("#job h1")).ToHaveTextAsync("Job not found", Patiently);

        // A job dead-lettered on its own is moved back from its page, and then runs.
        _gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        var lone = (await Api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))).JobId;
        await using (var broker = await TestBroker.ConnectAsync(Fixture))
        {
            await Eventually.AssertAsync(async () => Assert.Equal(1u, await broker.CountAsync(ErrorQueueKit.ChargeErrors)));
        }

        _gateway.FailEverythingWith = null;
        await page.ClickAsync("nav a[data-nav='jobs']");
        await page.FillAsync("#job-id", lone.ToString());
        await page.ClickAsync("#job-lookup button[type='submit']");
        await Expect(page.Locator("#job-status")).ToHaveTextAsync("dead-lettered", Patiently);
        await page.ClickAsync("#job-move-back");
        await page.ClickAsync("#dialog-confirm");
        await Expect(page.Locator("#job-move-result")).ToContainTextAsync("Moved back", new LocatorAssertionsToContainTextOptions { Timeout = 60_000 });
        await Expect(page.Locator("#job-status")).ToHaveTextAsync("succeeded", Patiently);
        await Screenshot(page, "09-job-moved-back");

        // Signing out ends the session.
        await page.ClickAsync("#sign-out");
        await Expect(page).ToHaveURLAsync(new Uri(Api.BaseAddress, "/dashboard/login").ToString());

        Assert.Empty(_browserErrors);
        await using var audit = Fixture.CreateDbContext();
        Assert.Equal([TestKeys.AdminName, TestKeys.AdminName], await audit.ErrorQueueOperations.Select(o => o.RequestedBy).ToListAsync());
    }

    private static async Task Screenshot(IPage page, string name) =>
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Chromium.ScreenshotDirectory(), $"dashboard-{name}.png"), FullPage = true });
}
