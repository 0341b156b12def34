using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Reports;
using Conveyor.Tests.Infrastructure;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// A succeeded report job's page shows its totals, each exactly as the Api wrote it: a sum past 2^53, which a
/// JavaScript number would round, keeps every digit.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class DashboardJobResultTests(ConveyorFixture fixture) : DashboardPageTest(fixture)
{
    private const string Huge = "123456789012345678901234567";


    [Fact]
    public async Task A_report_jobs_page_shows_its_filters_and_every_digit_of_its_totals()
    {
        // No worker runs here: the job and its report are written as a worker writes them.
        var reportId = Guid.NewGuid();
        var job = new Job
        {
            Id = Guid.NewGuid(),
            Kind = JobKinds.GenerateReport,
            BusinessKey = reportId.ToString(),
            Status = JobStatus.Succeeded,
            Attempts = 1,
            CreatedAt = DateTimeOffset.UtcNow,
            UpdatedAt = DateTimeOffset.UtcNow,
            FinishedAt = DateTimeOffset.UtcNow,
        };
        await using (var db = Fixture.CreateDbContext())
        {
            db.Jobs.Add(job);
            db.Reports.Add(new Report
            {
                ReportId = reportId,
                AccountId = "acct-dashboard",
                RowsScanned = 1234,
                Totals = $$"""[{"currency":"EUR","count":1230,"totalMinor":{{Huge}}},{"currency":"USD","count":4,"totalMinor":900}]""",
                CompletedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        await using var context = await NewContextAsync();
        var page = await SignedInPageAsync(context);
        await page.GotoAsync(new Uri(Api.BaseAddress, $"/dashboard/#/jobs/{job.Id}").ToString());

        var rows = page.Locator("#report-totals tbody tr");
        await Expect(rows).ToHaveCountAsync(2, new LocatorAssertionsToHaveCountOptions { Timeout = 60_000 });
        await Expect(rows.Nth(0)).ToHaveTextAsync($"EUR1,230{Huge}");
        await Expect(rows.Nth(1)).ToHaveTextAsync("USD4900");
        await Expect(page.Locator("#job-result")).ToContainTextAsync("acct-dashboard");
        await Expect(page.Locator("#job-result")).ToContainTextAsync("Currencyall");
        await Expect(page.Locator("#job-result")).ToContainTextAsync("1,234");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Chromium.ScreenshotDirectory(), "dashboard-10-report-result.png"), FullPage = true });
    }
}
