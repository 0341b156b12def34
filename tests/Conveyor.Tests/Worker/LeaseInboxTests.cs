using Conveyor.Contracts;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Reports;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Failures;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The lease inbox of long jobs (GenerateReport): a failed attempt never leaves its lease behind,
/// and a run that loses its lease stops and leaves the job to exactly one run.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class LeaseInboxTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "generate-report";
    private const string Account = "acct-lease";
    private const int LedgerRows = 200;

    /// <summary>What the other worker's report says, unlike any our worker computes.</summary>
    private const string OtherWorkersTotals = "[]";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_failure_between_the_claim_and_the_run_releases_the_lease_so_the_retry_runs_at_once()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        var report = NewReport(pageSize: 50);
        var key = report.ReportId.ToString();
        // The first write of the job's row, the attempt's start right after the claim, fails transiently;
        // nextval is not rolled back with the statement it fails, so later writes pass.
        await using var fault = await TestTrigger.CreateAsync(fixture, "lease_test_start_fails", "jobs", $"""
            CREATE SEQUENCE lease_test_start_fails;
            CREATE FUNCTION lease_test_start_fails() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('lease_test_start_fails') = 1 THEN
                RAISE EXCEPTION 'test: the job row cannot be written now' USING ERRCODE = '40001';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER lease_test_start_fails BEFORE INSERT OR UPDATE ON jobs
              FOR EACH ROW WHEN (NEW.business_key = '{key}') EXECUTE FUNCTION lease_test_start_fails();
            """);
        // A lease left behind would hold every copy of the message off for ten minutes.
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:GenerateReport:LeaseSeconds", "600")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        await WaitUntilSucceededAsync(key);
        Assert.True(await fault.FiredAsync() > 1, "the job row's first write did not fail");
        await using var check = fixture.CreateDbContext();
        // The in-memory retry ran it: no copy was deferred, and the start that failed counted nothing.
        Assert.Equal(1, (await check.Jobs.SingleAsync(j => j.BusinessKey == key)).Attempts);
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Equal(LedgerRows, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
    }

    [Fact]
    public async Task A_run_whose_lease_another_worker_takes_over_stops_and_the_other_workers_result_stands()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        var report = NewReport(pageSize: 1);
        var key = report.ReportId.ToString();
        using var skipped = WorkerMetric.Duplicates(Queue);
        await fixture.DeclareAsync(Queue + "_skipped");
        await fixture.DeclareAsync(Queue + "_error");
        await using var worker = await fixture.StartWorkerAsync(SlowReports());
        skipped.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await publisher.PublishAsync(report);
        await WaitUntilRunningAsync(key);

        // Another worker takes the lease over, as after a pause of ours longer than the lease.
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
                UPDATE inbox SET lease_owner = 'other-worker', lease_expires_at = now() + interval '20 seconds'
                 WHERE message_key = {key} AND status = {InboxStatus.Processing}
                """));
        }

        // Our run stops at its next heartbeat (the whole report would take close to a minute), and its
        // copy of the message is acked, parked until the other worker's lease would lapse.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(1, await db.ScheduledMessages.CountAsync());
            Assert.Equal(0, (await fixture.Rabbit.QueueAsync(fixture.VirtualHost, Queue))?.Messages);
        }, DescribeAsync, TimeSpan.FromSeconds(30));
        await using (var db = fixture.CreateDbContext())
        {
            // Neither committed nor counted as a failure: the job is the other worker's now.
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
            Assert.Equal((JobStatus.Running, 1, (string?)null), (job.Status, job.Attempts, job.LastError));
            Assert.False(await db.Reports.AnyAsync());
            var inbox = await db.Inbox.AsNoTracking().SingleAsync(i => i.MessageKey == key);
            Assert.Equal((InboxStatus.Processing, "other-worker"), (inbox.Status, inbox.LeaseOwner));
        }

        await FinishAsOtherWorkerAsync(report);

        // The parked copy comes back when the other lease would have lapsed, and finds the job done.
        await Eventually.AssertAsync(() => Assert.Equal(1, skipped.Count), TimeSpan.FromSeconds(60));
        // Settled by the inbox, not left to MassTransit's _skipped queue (stopping lets it finish the copy).
        await worker.StopAsync();
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_skipped"));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(OtherWorkersTotals, (await check.Reports.SingleAsync()).Totals);
        var done = await check.Jobs.SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((JobStatus.Succeeded, 1), (done.Status, done.Attempts));
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_error"));
    }

    [Fact]
    public async Task A_run_whose_lease_runs_out_unrenewed_stops_and_the_job_runs_again_to_one_result()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        // Counted at the end, exactly: MassTransit declares an _error queue only when it first moves a message there.
        await fixture.DeclareAsync(Queue + "_error");
        var report = NewReport(pageSize: 1);
        var key = report.ReportId.ToString();
        // Every renewal of the job's lease fails, as when the heartbeat cannot reach the database;
        // a claim (a new owner) and the final commit (done) still pass.
        var fault = await TestTrigger.CreateAsync(fixture, "lease_test_renewal_fails", "inbox", $"""
            CREATE SEQUENCE lease_test_renewal_fails;
            CREATE FUNCTION lease_test_renewal_fails() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              PERFORM nextval('lease_test_renewal_fails');
              RAISE EXCEPTION 'test: the lease cannot be renewed';
            END $$;
            CREATE TRIGGER lease_test_renewal_fails BEFORE UPDATE ON inbox
              FOR EACH ROW WHEN (NEW.message_key = '{key}' AND NEW.status = 'processing' AND OLD.lease_owner = NEW.lease_owner)
              EXECUTE FUNCTION lease_test_renewal_fails();
            """);
        await using var dropFault = fault;
        var settings = SlowReports();
        var first = await fixture.StartWorkerAsync(settings);
        await using var stopFirst = first;
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await publisher.PublishAsync(report);
        await WaitUntilRunningAsync(key);

        // The run stops once its 6 s lease has run out unrenewed (the whole report would take close to
        // a minute), and its parked copy starts the job again.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.True((await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Attempts > 1, "no second attempt yet");
        }, DescribeAsync, TimeSpan.FromSeconds(30));
        Assert.True(await fault.FiredAsync() > 0, "no renewal failed");
        await using (var db = fixture.CreateDbContext())
        {
            // The stopped run was not counted as a failure.
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
            Assert.Equal((JobStatus.Running, (string?)null), (job.Status, job.LastError));
            Assert.False(await db.Reports.AnyAsync());
        }

        // The heartbeat reaches the database again; a worker without page delays finishes the job.
        await fault.DisposeAsync();
        await first.DisposeAsync();
        settings["Reports:PageDelayMilliseconds"] = "0";
        await using var second = await fixture.StartWorkerAsync(settings);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Status);
        }, DescribeAsync);
        await using var check = fixture.CreateDbContext();
        var stored = await check.Reports.SingleAsync();
        Assert.Equal(LedgerRows, stored.RowsScanned);
        Assert.NotEqual(OtherWorkersTotals, stored.Totals);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_error"));
    }

    [Fact]
    public async Task A_run_that_would_outlast_its_deliverys_consumer_timeout_is_stopped_redelivered_once_then_dead_lettered()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        // 200 pages a quarter of a second apart: about 50 s, against a stated consumer_timeout of 10 s,
        // whose deadline (less a 1 s margin) stops a run after 9 s unacked.
        var report = NewReport(pageSize: 1);
        var key = report.ReportId.ToString();
        var settings = SlowReports().Override(
            ("RabbitMq:ConsumerTimeoutSeconds", "10"),
            ("RabbitMq:MaxRetryHoldPercent", "100"),
            // A lease that outlasts the deadline: the 6 s one, renewed every 2 s, ran out on a busy machine whose
            // heartbeat was held up for 4 s, and its run rightly gave the job up, parked its copy and ran it again:
            // an attempt more than this test is about.
            ("Consumers:GenerateReport:LeaseSeconds", "60"),
            // The other endpoints' retries must fit the short timeout for the worker to start.
            ("Consumers:ChargePayment:PrefetchCount", "1"),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:PrefetchCount", "1"),
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:GenerateReport:PrefetchCount", "1"),
            // An in-memory retry would be cut off at once: a stopped run is not retried on its delivery.
            ("Consumers:GenerateReport:RetryLimit", "1"),
            ("Consumers:GenerateReport:RedeliveryLimit", "1"),
            ("Consumers:GenerateReport:RedeliveryBaseDelayMilliseconds", "500"));
        await fixture.DeclareAsync(Queue + "_error");
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        // Stopped on its first delivery, redelivered once with a fresh one, stopped again, then _error.
        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await amqp.TakeAllAsync(Queue + "_error")), DescribeAsync, TimeSpan.FromSeconds(60));
        Assert.Equal(typeof(DeliveryDeadlineException).FullName, dead!.Header("MT-Fault-ExceptionType"));
        Assert.Contains("consumer_timeout (RabbitMq:ConsumerTimeoutSeconds 10 s)", dead.Header("MT-Fault-Message"), StringComparison.Ordinal);
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((JobStatus.DeadLettered, 2), (job.Status, job.Attempts));
        Assert.Contains("consumer_timeout", job.LastError, StringComparison.Ordinal);
        // Nothing of the stopped runs was committed, and neither left its lease behind.
        Assert.False(await check.Reports.AnyAsync());
        Assert.False(await check.Inbox.AnyAsync(i => i.MessageKey == key));
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Equal(0u, await fixture.ReadyAsync(Queue));
    }

    [Fact]
    public async Task A_run_stopped_at_its_deadline_whose_lease_runs_out_while_it_winds_down_fails_as_out_of_time()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        var report = NewReport(pageSize: 1);
        var key = report.ReportId.ToString();
        // The run's first progress write past 0 % waits in the database until the deadline cancels it, and the
        // database then takes 15 s more to give the statement up: the run winds down past the end of its 12 s
        // lease (renewed every 4 s), whose heartbeat stopped with the run. Long enough a lease that a heartbeat
        // held up by a busy machine still keeps it until the deadline.
        await using var slowStop = await TestTrigger.CreateAsync(fixture, "lease_test_slow_stop", "jobs", $"""
            CREATE SEQUENCE lease_test_slow_stop;
            CREATE FUNCTION lease_test_slow_stop() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NOT (SELECT is_called FROM lease_test_slow_stop) THEN
                PERFORM nextval('lease_test_slow_stop');
                BEGIN
                  PERFORM pg_sleep(60);
                EXCEPTION WHEN query_canceled THEN
                  PERFORM pg_sleep(15);
                END;
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER lease_test_slow_stop BEFORE UPDATE ON jobs
              FOR EACH ROW WHEN (NEW.business_key = '{key}' AND NEW.progress IS DISTINCT FROM OLD.progress AND NEW.progress >= 1)
              EXECUTE FUNCTION lease_test_slow_stop();
            """);
        var settings = SlowReports().Override(
            // Npgsql waits for the cancelled statement's end, however long (its default gives up after 2 s).
            ("ConnectionStrings:Conveyor", fixture.ConnectionString + ";Cancellation Timeout=0"),
            ("Consumers:GenerateReport:LeaseSeconds", "12"),
            ("RabbitMq:ConsumerTimeoutSeconds", "10"),
            ("RabbitMq:MaxRetryHoldPercent", "100"),
            ("Consumers:ChargePayment:PrefetchCount", "1"),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:PrefetchCount", "1"),
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:GenerateReport:PrefetchCount", "1"),
            ("Consumers:GenerateReport:RetryLimit", "0"),
            ("Consumers:GenerateReport:RedeliveryLimit", "1"),
            // The redelivery stays stored while the test looks.
            ("Consumers:GenerateReport:RedeliveryBaseDelayMilliseconds", "60000"));
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        // The deadline stopped the run, not the lease that ran out after: a failed attempt, redelivered.
        // Before, the run was taken for one whose lease was lost, and its copy parked and run again unbudgeted.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.NotEqual(JobStatus.Running, (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Status);
        }, DescribeAsync, TimeSpan.FromSeconds(60));
        Assert.Equal(1, await slowStop.FiredAsync());
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((JobStatus.RetryScheduled, 1), (job.Status, job.Attempts));
        Assert.Contains("consumer_timeout", job.LastError, StringComparison.Ordinal);
        var redelivery = await check.ScheduledMessages.AsNoTracking().SingleAsync();
        Assert.Matches(":redelivery:[0-9a-f]+:1$", redelivery.DedupeKey);
        Assert.False(await check.Reports.AnyAsync());
        Assert.False(await check.Inbox.AnyAsync(i => i.MessageKey == key));
    }

    [Fact]
    public async Task A_worker_whose_clock_runs_ten_minutes_ahead_leaves_another_workers_live_lease_alone()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        var report = NewReport(pageSize: 50);
        var key = report.ReportId.ToString();
        var skew = TimeSpan.FromMinutes(10);
        // Another worker holds the job's lease for another minute, by the database's clock.
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
                INSERT INTO inbox (consumer_id, message_key, received_at, status, lease_owner, lease_expires_at)
                VALUES ('generate-report', {key}, now(), {InboxStatus.Processing}, 'other-worker', now() + interval '60 seconds')
                """));
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(), builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(skew)));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await publisher.PublishAsync(report);

        // Its copy is parked until the lease would lapse: a minute after it was taken by the database's clock, which
        // the dispatchers read due times by, not by its own ten minutes ahead; and the lease is not taken over.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        }, DescribeAsync);
        await using var check = fixture.CreateDbContext();
        var parked = await check.ScheduledMessages.AsNoTracking().SingleAsync();
        Assert.Matches(":deferred:[0-9a-f]{32}:1$", parked.DedupeKey);
        var inbox = await check.Inbox.AsNoTracking().SingleAsync(i => i.MessageKey == key);
        Assert.Equal((InboxStatus.Processing, "other-worker"), (inbox.Status, inbox.LeaseOwner));
        // Measured from the lease's end, not from now: the lease was taken before the worker started, and a start
        // that took more than a few seconds (a busy machine) would leave less than the minute between now and it.
        // Due a moment (the deferral's jitter) after the lease lapses, not ten minutes after, nor before it.
        Assert.InRange(parked.DueAt - inbox.LeaseExpiresAt!.Value, TimeSpan.Zero, TimeSpan.FromSeconds(15));
        Assert.False(await check.Reports.AnyAsync());
    }

    [Fact]
    public async Task A_copy_whose_claim_meets_a_lease_let_go_of_before_it_looks_again_is_deferred_and_runs_the_job()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        var report = NewReport(pageSize: 50);
        var key = report.ReportId.ToString();
        // Another worker holds the job's lease, and lets go of it (its run failed, or met a command of
        // other content) just after this worker's claim was refused: the trigger deletes that lease at
        // the end of the refused claim's statement, before the copy looks at the row again.
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
                INSERT INTO inbox (consumer_id, message_key, received_at, status, lease_owner, lease_expires_at)
                VALUES ('generate-report', {key}, now(), {InboxStatus.Processing}, 'other-worker', now() + interval '10 minutes')
                """));
        }

        await using var letGo = await TestTrigger.CreateAsync(fixture, "lease_test_let_go", "inbox", $"""
            CREATE SEQUENCE lease_test_let_go;
            CREATE FUNCTION lease_test_let_go() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF EXISTS (SELECT 1 FROM inbox WHERE message_key = '{key}' AND lease_owner = 'other-worker') THEN
                PERFORM nextval('lease_test_let_go');
                DELETE FROM inbox WHERE message_key = '{key}' AND lease_owner = 'other-worker';
              END IF;
              RETURN NULL;
            END $$;
            CREATE TRIGGER lease_test_let_go AFTER INSERT ON inbox FOR EACH STATEMENT EXECUTE FUNCTION lease_test_let_go();
            """);
        using var skipped = WorkerMetric.Duplicates(Queue);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        skipped.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        // Nobody holds the job and nobody finished it: not a duplicate. Before, the copy was settled as
        // one, and the job never ran.
        await WaitUntilSucceededAsync(key);
        Assert.Equal(1, await letGo.FiredAsync());
        Assert.Equal(0, skipped.Count);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(LedgerRows, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
    }

    [Fact]
    public async Task A_worker_whose_report_endpoint_prefetches_more_than_it_runs_at_once_refuses_to_start()
    {
        // A second report prefetched behind a long one waited unacked inside the client, unseen by its run's
        // deadline, and then got the whole deadline of its own: the broker closed the channel mid-run.
        var settings = WorkerSettings.With().Override(
            ("Consumers:GenerateReport:PrefetchCount", "2"),
            ("Consumers:GenerateReport:ConcurrentMessageLimit", "1"));

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartWorkerAsync(settings));

        Assert.Contains("Consumers:GenerateReport:PrefetchCount (2) must not exceed Consumers:GenerateReport:ConcurrentMessageLimit (1)", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_report_runs_to_success_against_a_consumer_timeout_of_a_year()
    {
        await fixture.SeedLedgerAsync(Account, LedgerRows);
        var report = NewReport(pageSize: 50);
        // The largest timeout the setting allows: its deadline is more than a timer can hold.
        // A run may hold its lease for that long, and so a copy parked behind it must wait as long: 13140 parks of at least
        // two thirds of an hour's lease (the worker refuses fewer, MaxLeaseDeferrals).
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("RabbitMq:ConsumerTimeoutSeconds", "31536000"),
            ("Consumers:GenerateReport:LeaseSeconds", "3600"),
            ("Consumers:GenerateReport:MaxLeaseDeferrals", "13140")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        await WaitUntilSucceededAsync(report.ReportId.ToString());
        await using var check = fixture.CreateDbContext();
        Assert.Equal(LedgerRows, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
    }

    [Fact]
    public async Task Two_different_copies_that_meet_another_workers_live_lease_are_both_parked()
    {
        var report = NewReport(pageSize: 50);
        var key = report.ReportId.ToString();
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
                INSERT INTO inbox (consumer_id, message_key, received_at, status, lease_owner, lease_expires_at)
                VALUES ('generate-report', {key}, now(), {InboxStatus.Processing}, 'other-worker', now() + interval '10 minutes')
                """));
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var publisher = await TestPublisher.StartAsync(fixture);

        // The same report id with other content (ADR 0011): should the other worker's run fail, either may be the job.
        await publisher.PublishAsync(report);
        await publisher.PublishAsync(report with { AccountId = "acct-other" });

        // Before, both took the same dedupe key and the second was acked with nothing stored.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(2, await db.ScheduledMessages.CountAsync());
            Assert.Equal(0u, await fixture.ReadyAsync(Queue));
        }, DescribeAsync, TimeSpan.FromSeconds(20));
        await using var check = fixture.CreateDbContext();
        Assert.All(await check.ScheduledMessages.AsNoTracking().Select(m => m.DedupeKey).ToListAsync(),
            dedupeKey => Assert.Matches(":deferred:[0-9a-f]{32}:1$", dedupeKey));
    }

    [Fact]
    public async Task A_copy_that_keeps_meeting_another_workers_renewed_lease_goes_to_error_after_its_most_deferrals_and_leaves_the_job_alone()
    {
        var report = NewReport(pageSize: 50);
        var key = report.ReportId.ToString();
        await fixture.DeclareAsync(Queue + "_error");
        await using (var db = fixture.CreateDbContext())
        {
            var now = DateTimeOffset.UtcNow;
            db.Jobs.Add(new Job { Id = Guid.NewGuid(), Kind = JobKinds.GenerateReport, BusinessKey = key, Status = JobStatus.Running, Attempts = 1, CreatedAt = now, UpdatedAt = now });
            await db.SaveChangesAsync();
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
                INSERT INTO inbox (consumer_id, message_key, received_at, status, lease_owner, lease_expires_at)
                VALUES ('generate-report', {key}, now(), {InboxStatus.Processing}, 'other-worker', now() + interval '4 seconds')
                """));
        }

        using var spent = WorkerMetric.LeaseDeferralsSpent(Queue);
        using var failed = WorkerMetric.AttemptsFailed(JobKinds.GenerateReport);
        using var deadLettered = WorkerMetric.DeadLettered(JobKinds.GenerateReport);
        using var retries = WorkerMetric.RetriesScheduled(JobKinds.GenerateReport);
        // The other worker's run never ends (no consumer_timeout stops it), and its heartbeat keeps the lease 4 s ahead.
        using var stop = new CancellationTokenSource();
        var heartbeat = RenewLeaseAsync(key, stop.Token);
        try
        {
            await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
                ("Consumers:GenerateReport:MaxLeaseDeferrals", "2"), NoConsumerTimeout));
            foreach (var metric in new[] { spent, failed, deadLettered, retries })
            {
                metric.Watch(worker.Services);
            }

            await using var publisher = await TestPublisher.StartAsync(fixture);

            await publisher.PublishAsync(report);

            // Parked twice, each time coming back to the lease renewed; the third time it goes to _error. Before, it was
            // parked for as long as the lease was held: for ever.
            await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
            RawAmqpProducer.TakenMessage? dead = null;
            await Eventually.AssertAsync(async () => dead = Assert.Single(await amqp.TakeAllAsync(Queue + "_error")), DescribeAsync, TimeSpan.FromSeconds(90));
            Assert.Contains("Consumers:GenerateReport:MaxLeaseDeferrals", dead!.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
            Assert.Contains("another worker", dead.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
            Assert.Equal("2", dead.Header("Conveyor-Lease-Deferrals"));
        }
        finally
        {
            await stop.CancelAsync();
            await heartbeat;
        }

        // The job is the run's that holds the lease: neither dead-lettered nor counted a failed attempt by the parked copy.
        // The copy is counted as what it is (before, only its warning said so), and as nothing else: no failed attempt, no
        // dead-lettered job, no retry.
        Assert.Equal(1, spent.Count);
        Assert.Equal((0, 0, 0), (failed.Count, deadLettered.Count, retries.Count));
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((JobStatus.Running, 1), (job.Status, job.Attempts));
        Assert.Equal("other-worker", (await check.Inbox.AsNoTracking().SingleAsync(i => i.MessageKey == key)).LeaseOwner);
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.False(await check.Reports.AnyAsync());
    }

    [Fact]
    public async Task A_retry_of_a_copy_parked_behind_a_lease_is_stored_without_its_count_of_parks()
    {
        // A copy parked twice behind another worker's lease (its count sealed by the worker) runs once that lease is gone,
        // and its attempt fails: its retry is a new attempt, whose parks count from none, as an origin's times aside do.
        // Kept, the count made MaxLeaseDeferrals a budget for the command's whole life: this retry would go to _error the
        // first time it met a lease.
        var report = NewReport(pageSize: 50);
        var key = report.ReportId.ToString();
        await using var fault = await TestTrigger.CreateAsync(fixture, "lease_test_run_fails", "jobs", $"""
            CREATE SEQUENCE lease_test_run_fails;
            CREATE FUNCTION lease_test_run_fails() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              PERFORM nextval('lease_test_run_fails');
              RAISE EXCEPTION 'test: the job row cannot be written now' USING ERRCODE = '40001';
            END $$;
            CREATE TRIGGER lease_test_run_fails BEFORE INSERT OR UPDATE ON jobs
              FOR EACH ROW WHEN (NEW.business_key = '{key}') EXECUTE FUNCTION lease_test_run_fails();
            """);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:GenerateReport:MaxLeaseDeferrals", "2"), NoConsumerTimeout, ("Consumers:GenerateReport:RetryLimit", "0"), ("Redelivery:DispatcherEnabled", "false")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var parked = worker.Services.GetRequiredService<Conveyor.Worker.Redelivery.RedeliverySeal>().SealLeaseDeferrals("generate-report", key, 2);

        await publisher.PublishAsync(report, headers: new Dictionary<string, string> { ["Conveyor-Lease-Deferrals"] = "2", ["Conveyor-Lease-Deferrals-Seal"] = parked });

        Dictionary<string, string>? stored = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            stored = System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, string>>(
                (await db.ScheduledMessages.AsNoTracking().SingleAsync()).Headers);
        }, DescribeAsync, TimeSpan.FromSeconds(30));
        Assert.True(await fault.FiredAsync() > 0, "the run did not fail");
        Assert.Equal("1", stored!["Conveyor-Redelivery-Attempt"]);
        Assert.DoesNotContain(stored.Keys, k => k.StartsWith("Conveyor-Lease-Deferrals", StringComparison.OrdinalIgnoreCase));
    }

    [Fact]
    public async Task A_deferral_count_a_sender_wrote_itself_counts_for_nothing()
    {
        // Anything a sender may put in the header, with or without a seal of its own making.
        var forged = new (string Count, string? Seal)[]
        {
            ("1", null), ("2147483647", null), ("99999999999999999999", null), ("-5", null), ("-2147483648", null), ("abc", null), (" 1", null), ("1", "forged"),
        };
        var reports = forged.Select(_ => NewReport(pageSize: 50)).ToList();
        await fixture.DeclareAsync(Queue + "_error");
        await using (var db = fixture.CreateDbContext())
        {
            foreach (var report in reports)
            {
                Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
                    INSERT INTO inbox (consumer_id, message_key, received_at, status, lease_owner, lease_expires_at)
                    VALUES ('generate-report', {report.ReportId.ToString()}, now(), {InboxStatus.Processing}, 'other-worker', now() + interval '10 minutes')
                    """));
            }
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(("Consumers:GenerateReport:MaxLeaseDeferrals", "2"), NoConsumerTimeout));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        foreach (var (report, (count, seal)) in reports.Zip(forged))
        {
            var headers = new Dictionary<string, string> { ["Conveyor-Lease-Deferrals"] = count };
            if (seal is not null)
            {
                headers["Conveyor-Lease-Deferrals-Seal"] = seal;
            }

            await publisher.PublishAsync(report, headers: headers);
        }

        // Each is parked as a first deferral: no sender's count takes a copy nearer its limit (before, "1" made it the
        // second), past it, or round to a negative count ("2147483647" plus one) that the limit would never reach.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(reports.Count, await db.ScheduledMessages.CountAsync());
        }, DescribeAsync, TimeSpan.FromSeconds(30));
        await using var check = fixture.CreateDbContext();
        Assert.All(await check.ScheduledMessages.AsNoTracking().Select(m => m.DedupeKey).ToListAsync(),
            dedupeKey => Assert.Matches(":deferred:[0-9a-f]{32}:1$", dedupeKey));
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_error"));
    }

    /// <summary>Keeps another worker's lease on <paramref name="key"/> 4 s ahead, renewed every half second, as its heartbeat would.</summary>
    private async Task RenewLeaseAsync(string key, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await using var db = fixture.CreateDbContext();
                await db.Database.ExecuteSqlInterpolatedAsync($"""
                    UPDATE inbox SET lease_expires_at = clock_timestamp() + interval '4 seconds'
                     WHERE message_key = {key} AND lease_owner = 'other-worker'
                    """, stop);
                await Task.Delay(TimeSpan.FromMilliseconds(500), stop);
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
        }
    }

    /// <summary>
    /// A broker without a consumer_timeout, so nothing bounds a run: the case a few parks (<c>MaxLeaseDeferrals</c> 2) are
    /// for. With the 1800 s one, 2 parks of a copy behind a 60 s lease (80 s at the least) are refused at start.
    /// </summary>
    private static readonly (string, string) NoConsumerTimeout = ("RabbitMq:ConsumerTimeoutSeconds", "0");

    /// <summary>
    /// Pages a quarter of a second apart, a 6 s lease renewed every 2 s, and a quick stop. 450 parks of at least 4 s
    /// behind a lease reach the 1800 s consumer_timeout (the worker refuses fewer, MaxLeaseDeferrals).
    /// </summary>
    private static Dictionary<string, string?> SlowReports() => WorkerSettings.With().Override(
        ("Reports:PageDelayMilliseconds", "250"),
        ("Consumers:GenerateReport:LeaseSeconds", "6"),
        ("Consumers:GenerateReport:MaxLeaseDeferrals", "450"),
        ("Shutdown:ConsumerStopTimeoutSeconds", "1"),
        ("Shutdown:BusStopTimeoutSeconds", "5"),
        ("Shutdown:HostShutdownTimeoutSeconds", "10"));

    private static GenerateReport NewReport(int pageSize) => new() { ReportId = Guid.NewGuid(), AccountId = Account, PageSize = pageSize };


    private async Task WaitUntilSucceededAsync(string key) =>
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Status);
        }, DescribeAsync, TimeSpan.FromSeconds(30));

    private async Task WaitUntilRunningAsync(string key) =>
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == key);
            Assert.Equal(JobStatus.Running, job.Status);
            Assert.True(job.Progress > 0, "no progress yet");
        }, DescribeAsync);

    /// <summary>What a worker that holds the lease commits at the end of its run, in one transaction.</summary>
    private async Task FinishAsOtherWorkerAsync(GenerateReport report)
    {
        var key = report.ReportId.ToString();
        await using var db = fixture.CreateDbContext();
        await using var transaction = await db.Database.BeginTransactionAsync();
        Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE inbox SET status = {InboxStatus.Done}, lease_owner = NULL, lease_expires_at = NULL
             WHERE message_key = {key} AND lease_owner = 'other-worker'
            """));
        db.Reports.Add(new Report
        {
            ReportId = report.ReportId,
            AccountId = report.AccountId,
            RowsScanned = LedgerRows,
            Totals = OtherWorkersTotals,
            CompletedAt = DateTimeOffset.UtcNow,
        });
        await db.SaveChangesAsync();
        await db.Jobs.Where(j => j.BusinessKey == key).ExecuteUpdateAsync(job => job
            .SetProperty(j => j.Status, JobStatus.Succeeded)
            .SetProperty(j => j.Progress, 100)
            .SetProperty(j => j.FinishedAt, DateTimeOffset.UtcNow));
        await transaction.CommitAsync();
    }

    private async Task<string> DescribeAsync()
    {
        await using var db = fixture.CreateDbContext();
        var jobs = await db.Jobs.AsNoTracking().Select(j => $"job {j.Status} attempts {j.Attempts} progress {j.Progress} error {j.LastError}").ToListAsync();
        var inbox = await db.Inbox.AsNoTracking().Select(i => $"inbox {i.Status} owner {i.LeaseOwner} until {i.LeaseExpiresAt}").ToListAsync();
        var parked = await db.ScheduledMessages.AsNoTracking().Select(s => $"scheduled {s.DedupeKey} due {s.DueAt}").ToListAsync();
        return string.Join(Environment.NewLine, jobs.Concat(inbox).Concat(parked));
    }
}
