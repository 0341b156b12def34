using Conveyor.Contracts.Reports;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A leased run whose lease is no longer its own when it comes to commit: its final transaction re-checks
/// the owner and commits nothing, and its copy of the message is parked, never acked, so that the job
/// still runs when nothing else will run it.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class LeaseLostAtCompletionTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Account = "acct-lease-completion";
    private const int LedgerRows = 10;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_run_whose_lease_was_taken_over_and_let_go_before_its_commit_runs_the_job_again_to_one_report()
    {
        // Counted at the end, exactly: MassTransit declares an _error queue only when it first moves a message there.
        await fixture.DeclareAsync("generate-report_error");
        await fixture.SeedLedgerAsync(Account, LedgerRows);

        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = Account, PageSize = 5 };
        var key = report.ReportId.ToString();
        // When the run has read its last page (progress 99), its lease row goes, once: what a delivery of a
        // command with other content under the same report id leaves after it took the lapsed lease over and
        // let it go again as a conflict with the job (ADR 0011), its copy on the way to _error. The run's
        // next heartbeat is 20 s away (the default 60 s lease), so only its commit can notice.
        await using var letGo = await TestTrigger.CreateAsync(fixture, "lease_test_let_go", "jobs", $"""
            CREATE SEQUENCE lease_test_let_go;
            CREATE FUNCTION lease_test_let_go() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('lease_test_let_go') = 1 THEN
                DELETE FROM inbox WHERE consumer_id = 'generate-report' AND message_key = NEW.business_key;
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER lease_test_let_go AFTER UPDATE OF progress ON jobs
              FOR EACH ROW WHEN (NEW.business_key = '{key}' AND NEW.progress = 99) EXECUTE FUNCTION lease_test_let_go();
            """);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        // Acked, the copy was the job's last: the job read running for good and no report was made.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Status);
        }, DescribeAsync);
        Assert.True(await letGo.FiredAsync() >= 1, "the lease was never let go");
        await using var check = fixture.CreateDbContext();
        // The first run's results were dropped at its commit; the parked copy ran the job once more.
        Assert.Equal(2, (await check.Jobs.SingleAsync(j => j.BusinessKey == key)).Attempts);
        Assert.Equal(LedgerRows, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
        Assert.Equal(0u, await fixture.ReadyAsync("generate-report_error"));
    }

    private async Task<string> DescribeAsync()
    {
        await using var db = fixture.CreateDbContext();
        var jobs = await db.Jobs.AsNoTracking().Select(j => $"job {j.Status} attempts {j.Attempts} progress {j.Progress}").ToListAsync();
        var inbox = await db.Inbox.AsNoTracking().Select(i => $"inbox {i.Status} owner {i.LeaseOwner}").ToListAsync();
        var parked = await db.ScheduledMessages.AsNoTracking().Select(s => $"scheduled {s.DedupeKey} due {s.DueAt}").ToListAsync();
        var ready = await fixture.ReadyAsync("generate-report");
        return string.Join(Environment.NewLine, jobs.Concat(inbox).Concat(parked).Append($"ready in generate-report: {ready}"));
    }
}
