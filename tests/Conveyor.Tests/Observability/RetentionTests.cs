using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Operations;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Retention;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Observability;

[Collection(AloneCollection.Name)]
public sealed class RetentionTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task The_sweeper_deletes_only_what_is_past_its_window_in_small_batches()
    {
        var now = DateTimeOffset.UtcNow;
        var old = now.AddDays(-40);
        var recent = now.AddHours(-1);
        await using (var db = fixture.CreateDbContext())
        {
            db.Inbox.AddRange(
                Inbox("old-done-1", old, InboxStatus.Done),
                Inbox("old-done-2", old, InboxStatus.Done),
                Inbox("old-done-3", old, InboxStatus.Done),
                Inbox("recent-done", recent, InboxStatus.Done),
                // A long job's lease, its worker killed 40 days ago and its message never back.
                Inbox("old-processing", old, InboxStatus.Processing),
                // A long job that started long ago and still renews its lease.
                Inbox("old-processing-live", old, InboxStatus.Processing, leaseExpiresAt: now.AddMinutes(1)),
                // A lease that ran out an hour ago: its message may still come back to take it over.
                Inbox("old-processing-lapsed-lately", old, InboxStatus.Processing, leaseExpiresAt: recent));
            db.Jobs.AddRange(
                Job("old-succeeded", JobStatus.Succeeded, old),
                Job("old-dead", JobStatus.DeadLettered, old),
                Job("old-cancelled", JobStatus.Cancelled, old),
                Job("recent-succeeded", JobStatus.Succeeded, recent),
                // Created long ago, finished recently: its window runs from the finish.
                Job("long-running-succeeded", JobStatus.Succeeded, recent, createdAt: old),
                Job("old-retrying", JobStatus.RetryScheduled, old),
                Job("old-queued", JobStatus.Queued, old));
            await db.SaveChangesAsync();
        }

        var settings = WorkerSettings.With();
        settings["Retention:InboxHours"] = "168";
        settings["Retention:JobHours"] = "720";
        settings["Retention:BatchSize"] = "2";
        // The background sweep stays off; the test runs one sweep itself.
        settings["Retention:Enabled"] = "false";
        await using var worker = await fixture.StartWorkerAsync(settings);
        var sweeper = worker.Services.GetRequiredService<RetentionSweeper>();

        var swept = await sweeper.SweepAsync(now, CancellationToken.None);

        Assert.Equal(4, swept.InboxRows);
        Assert.Equal(3, swept.Jobs);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(["old-processing-lapsed-lately", "old-processing-live", "recent-done"], await check.Inbox.Select(i => i.MessageKey).OrderBy(k => k).ToListAsync());
        Assert.Equal(["long-running-succeeded", "old-queued", "old-retrying", "recent-succeeded"], await check.Jobs.Select(j => j.BusinessKey).OrderBy(k => k).ToListAsync());
        Assert.Equal(new SweepResult(0, 0, 0), await sweeper.SweepAsync(now, CancellationToken.None));
    }

    [Fact]
    public async Task A_finished_job_is_kept_while_a_stored_command_or_an_inbox_row_of_it_remains()
    {
        var now = DateTimeOffset.UtcNow;
        var old = now.AddDays(-40);
        var (scheduledBefore, redelivered, replayed, alone) =
            (Job("scheduled-before-job-id", JobStatus.Succeeded, old), Job("redelivered", JobStatus.DeadLettered, old),
             Job("replayed", JobStatus.Succeeded, old), Job("alone", JobStatus.Succeeded, old));
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(scheduledBefore, redelivered, replayed, alone);
            // A scheduled job's command stored before rows named their job: found by its dedupe key.
            db.ScheduledMessages.Add(Stored($"job:{scheduledBefore.Id:D}", jobId: null, now.AddDays(200)));
            // A redelivery the broker keeps refusing, due at its next try: found by its job id.
            db.ScheduledMessages.Add(Stored($"{redelivered.BusinessKey}:2", redelivered.Id, now.AddHours(1)));
            // A replay recorded a day ago, under the job's consumer (its queue, named after the kind).
            db.Inbox.Add(Inbox(replayed.BusinessKey, now.AddDays(-1), InboxStatus.Done));
            await db.SaveChangesAsync();
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(("Retention:Enabled", "false")));
        var swept = await worker.Services.GetRequiredService<RetentionSweeper>().SweepAsync(now, CancellationToken.None);

        Assert.Equal(new SweepResult(0, 1, 0), swept);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(["redelivered", "replayed", "scheduled-before-job-id"], await check.Jobs.Select(j => j.BusinessKey).OrderBy(k => k).ToListAsync());
        var metrics = await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.True(PrometheusText.Sum(metrics, "conveyor_retention_deleted_total", "table=\"jobs\"") >= 1, "deleted jobs counted");
    }

    /// <summary>
    /// A replay that finds a finished job records its inbox row; committed after the sweep's batch chose the
    /// job (its first statement's snapshot is older), the job was deleted all the same, and a resubmission of
    /// its business key then made a new job whose command the inbox acked as that replay's duplicate, unrun.
    /// The batch's second statement tests again, with the jobs locked. Run here step by step, a commit of the
    /// test's between them: within the old single statement the moment cannot be chosen from outside.
    /// </summary>
    [Fact]
    public async Task A_finished_job_is_kept_when_its_command_is_recorded_after_the_sweep_chose_it()
    {
        var now = DateTimeOffset.UtcNow;
        var old = now.AddDays(-40);
        var (replayed, redelivered, alone) =
            (Job("replayed-meanwhile", JobStatus.Succeeded, old), Job("redelivered-meanwhile", JobStatus.DeadLettered, old), Job("alone", JobStatus.Cancelled, old));
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(replayed, redelivered, alone);
            await db.SaveChangesAsync();
        }

        await using var sweep = fixture.CreateDbContext();
        await using (var transaction = await sweep.Database.BeginTransactionAsync())
        {
            var locked = await RetentionSweeper.LockFinishedJobsAsync(sweep, now.AddDays(-30), 100, CancellationToken.None);
            Assert.Equal(new[] { replayed.Id, redelivered.Id, alone.Id }.Order(), locked.Order());

            // Meanwhile a replay's inbox row commits (a lease claim commits its row before it reads the job),
            // and so does a stored command of another.
            await using (var meanwhile = fixture.CreateDbContext())
            {
                meanwhile.Inbox.Add(Inbox(replayed.BusinessKey, now, InboxStatus.Done));
                meanwhile.ScheduledMessages.Add(Stored($"{redelivered.BusinessKey}:1", redelivered.Id, now.AddHours(1)));
                await meanwhile.SaveChangesAsync();
            }

            Assert.Equal(1, await RetentionSweeper.DeleteLockedJobsAsync(sweep, locked, CancellationToken.None));
            await transaction.CommitAsync();
        }

        await using var check = fixture.CreateDbContext();
        Assert.Equal(["redelivered-meanwhile", "replayed-meanwhile"], await check.Jobs.Select(j => j.BusinessKey).OrderBy(k => k).ToListAsync());
        Assert.Equal(JobStatus.Succeeded, (await check.Jobs.SingleAsync(j => j.Id == replayed.Id)).Status);
    }

    [Fact]
    public async Task Audit_rows_go_after_their_window_and_so_does_an_operation_whose_progress_stopped_that_long_ago()
    {
        var now = DateTimeOffset.UtcNow;
        var old = now.AddDays(-100);
        var recent = now.AddHours(-1);
        await using (var db = fixture.CreateDbContext())
        {
            db.ErrorQueueOperations.AddRange(
                Operation("old-finished", ErrorQueueOperationStates.Succeeded, old, old),
                // Its process died 100 days ago and no Api of its vhost has read operations since.
                Operation("old-abandoned", ErrorQueueOperationStates.Running, old, old),
                // Started long ago and still writing its progress: a live walk is never swept.
                Operation("old-live", ErrorQueueOperationStates.Running, old, recent),
                Operation("recent-finished", ErrorQueueOperationStates.Succeeded, recent, recent),
                Operation("recent-running", ErrorQueueOperationStates.Running, recent, recent));
            await db.SaveChangesAsync();
        }

        var settings = WorkerSettings.With();
        settings["Retention:AuditHours"] = "2160";
        settings["Retention:Enabled"] = "false";
        await using var worker = await fixture.StartWorkerAsync(settings);
        var sweeper = worker.Services.GetRequiredService<RetentionSweeper>();

        var swept = await sweeper.SweepAsync(now, CancellationToken.None);

        Assert.Equal(2, swept.AuditRows);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(
            ["old-live", "recent-finished", "recent-running"],
            await check.ErrorQueueOperations.Select(o => o.Queue).OrderBy(q => q).ToListAsync());
    }

    [Fact]
    public async Task A_failing_sweep_is_counted()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Retention:Enabled", "true"), ("Retention:IntervalSeconds", "1")));
        var before = await FailuresAsync(worker);
        await using (var db = fixture.CreateDbContext())
        {
            await db.Database.ExecuteSqlRawAsync("ALTER TABLE error_queue_operations RENAME TO error_queue_operations_away");
        }

        try
        {
            await Eventually.AssertAsync(async () => Assert.True(await FailuresAsync(worker) > before, "no failed sweep counted"));
        }
        finally
        {
            await using var db = fixture.CreateDbContext();
            await db.Database.ExecuteSqlRawAsync("ALTER TABLE error_queue_operations_away RENAME TO error_queue_operations");
        }
    }

    private static async Task<double> FailuresAsync(RunningApp worker) =>
        PrometheusText.Sum(await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative)), "conveyor_retention_failures_total");

    private static ScheduledMessage Stored(string dedupeKey, Guid? jobId, DateTimeOffset dueAt) => new()
    {
        DedupeKey = dedupeKey,
        Destination = "charge-payment",
        DueAt = dueAt,
        Headers = "{}",
        Body = [],
        CreatedAt = dueAt,
        JobId = jobId,
    };

    [Fact]
    public async Task The_background_sweep_measures_its_windows_by_the_database_clock_not_the_workers()
    {
        await using (var db = fixture.CreateDbContext())
        {
            // Both finished by the database's clock, which the dispatcher's and the leases' writes use.
            var databaseNow = await db.Database.SqlQuery<DateTimeOffset>($"SELECT clock_timestamp() AS \"Value\"").SingleAsync();
            db.Jobs.AddRange(
                Job("inside-window", JobStatus.Succeeded, databaseNow.AddHours(-23)),
                Job("past-window", JobStatus.Succeeded, databaseNow.AddHours(-48)));
            await db.SaveChangesAsync();
        }

        // A worker whose clock runs two hours ahead of the database's.
        var sweeper = new RetentionSweeper(
            fixture.DbContextFactory(), Options.Create(new RetentionOptions { JobHours = 24, IntervalSeconds = 3600 }),
            HostMeters.OwnJobMetrics(), new ClockAhead(TimeSpan.FromHours(2)), NullLogger<RetentionSweeper>.Instance);
        await sweeper.StartAsync(CancellationToken.None);
        try
        {
            await Eventually.AssertAsync(async () =>
            {
                await using var db = fixture.CreateDbContext();
                Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == "past-window"));
            });
        }
        finally
        {
            await sweeper.StopAsync(CancellationToken.None);
        }

        await using var check = fixture.CreateDbContext();
        Assert.True(await check.Jobs.AnyAsync(j => j.BusinessKey == "inside-window"), "a job 23 h old by the database's clock is inside a 24 h window");
    }

    private sealed class ClockAhead(TimeSpan ahead) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => base.GetUtcNow() + ahead;
    }

    private static ErrorQueueOperation Operation(string queue, string state, DateTimeOffset createdAt, DateTimeOffset updatedAt) => new()
    {
        Id = Guid.NewGuid(),
        Kind = ErrorQueueOperationKinds.Move,
        Queue = queue,
        Filter = "{}",
        State = state,
        RequestedBy = "admin",
        MessageIds = "[]",
        Targets = "{}",
        CreatedAt = createdAt,
        UpdatedAt = updatedAt,
    };

    private static InboxRecord Inbox(string key, DateTimeOffset receivedAt, string status, DateTimeOffset? leaseExpiresAt = null) => new()
    {
        ConsumerId = "charge-payment",
        MessageKey = key,
        ReceivedAt = receivedAt,
        Status = status,
        LeaseOwner = status == InboxStatus.Processing ? "someone" : null,
        LeaseExpiresAt = status == InboxStatus.Processing ? leaseExpiresAt ?? receivedAt.AddMinutes(1) : null,
    };

    private static Job Job(string key, string status, DateTimeOffset updatedAt, DateTimeOffset? createdAt = null) => new()
    {
        Id = Guid.NewGuid(),
        Kind = "charge-payment",
        BusinessKey = key,
        Status = status,
        CreatedAt = createdAt ?? updatedAt,
        UpdatedAt = updatedAt,
    };
}
