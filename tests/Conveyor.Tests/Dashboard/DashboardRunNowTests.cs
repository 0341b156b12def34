using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Playwright;
using static Microsoft.Playwright.Assertions;

namespace Conveyor.Tests.Dashboard;

/// <summary>
/// A scheduled job's page offers "Run now" to a session that may publish jobs: confirmed, its stored command is due now
/// (no worker runs here, so it stays in the store, due) and the page shows so.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class DashboardRunNowTests(ConveyorFixture fixture) : DashboardPageTest(fixture)
{

    [Fact]
    public async Task A_scheduled_jobs_page_runs_it_now_once_confirmed()
    {
        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        var accepted = await Api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt));

        await using var context = await NewContextAsync();
        var page = await SignedInPageAsync(context);
        await page.GotoAsync(new Uri(Api.BaseAddress, $"/dashboard/#/jobs/{accepted.JobId}").ToString());

        await Expect(page.Locator("#job-status")).ToHaveTextAsync(JobStatus.Scheduled, new LocatorAssertionsToHaveTextOptions { Timeout = 60_000 });
        await page.ClickAsync("#job-run-now");
        await Expect(page.Locator("#dialog")).ToBeVisibleAsync();
        await page.ClickAsync("#dialog-confirm");
        await Expect(page.Locator("#job-move-result")).ToHaveTextAsync("Due now: a worker runs it next.");

        await using var db = Fixture.CreateDbContext();
        var stored = await db.ScheduledMessages.AsNoTracking().SingleAsync(m => m.JobId == accepted.JobId);
        Assert.True(stored.DueAt < DateTimeOffset.UtcNow.AddMinutes(1), $"due at {stored.DueAt:O}");
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == accepted.JobId);
        Assert.Equal(JobStatus.Scheduled, job.Status);
        Assert.True(job.NextAttemptAt < runAt.AddMinutes(-30), $"next attempt at {job.NextAttemptAt:O}");
    }

    [Fact]
    public async Task The_scheduled_jobs_list_runs_a_kinds_jobs_now_once_confirmed()
    {
        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        for (var i = 0; i < 2; i++)
        {
            await Api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt));
        }

        await using var context = await NewContextAsync();
        var page = await SignedInPageAsync(context);
        await page.GotoAsync(new Uri(Api.BaseAddress, "/dashboard/#/jobs?status=scheduled").ToString());

        await Expect(page.Locator("#jobs tbody tr")).ToHaveCountAsync(2, new LocatorAssertionsToHaveCountOptions { Timeout = 60_000 });
        await page.SelectOptionAsync("#run-now-kind", JobKinds.ChargePayment);
        await page.ClickAsync("#run-now");
        await Expect(page.Locator("#dialog")).ToBeVisibleAsync();
        await page.ClickAsync("#dialog-confirm");
        await Expect(page.Locator("#run-now-result")).ToHaveTextAsync("2 charge-payment job(s) made due now.");

        await using var db = Fixture.CreateDbContext();
        var due = await db.ScheduledMessages.AsNoTracking().Select(m => m.DueAt).ToListAsync();
        Assert.Equal(2, due.Count);
        Assert.All(due, at => Assert.True(at < DateTimeOffset.UtcNow.AddMinutes(1), $"due at {at:O}"));
    }
}
