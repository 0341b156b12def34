using System.Net.Http.Json;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Conveyor.Worker.Retention;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Observability;

/// <summary>
/// The retention sweep never removes a job while something that could deliver its command again,
/// or recognise that command, is still stored: the job's final status is what stops such a copy.
/// The sweeps run as of a day in the future (default windows: inbox 7 days, jobs 30 days) against
/// rows the real claim path wrote.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class RetentionHorizonTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
    }

    public async Task DisposeAsync() => await _gateway.DisposeAsync();

    [Fact]
    public async Task A_scheduled_job_run_early_by_another_delivery_is_kept_while_its_stored_command_waits_which_then_does_not_run_it_again()
    {
        var now = DateTimeOffset.UtcNow;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        await using var api = await fixture.StartApiAsync();
        var paymentId = Guid.NewGuid();
        var scheduled = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(paymentId, now.AddDays(60)));

        // Another service publishes the same payment now: the claim takes the scheduled job and runs it.
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(Charge(paymentId));
        }

        await WaitForStatusAsync(scheduled.JobId, JobStatus.Succeeded);

        // 31 days on: the job finished more than JobHours ago, its inbox row went after InboxHours, and
        // its stored command still waits for its runAt.
        var swept = await Sweeper().SweepAsync(now.AddDays(31), CancellationToken.None);

        // The stored command is published (made due now): it finds the job's final status and is acked unrun.
        await MakeDueAsync();
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        });
        await fixture.AssertDrainedAsync(worker, JobKinds.ChargePayment);

        Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString()));
        await using (var db = fixture.CreateDbContext())
        {
            var job = await db.Jobs.AsNoTracking().WithoutRequestBody().SingleAsync(j => j.Id == scheduled.JobId);
            Assert.Equal(JobStatus.Succeeded, job.Status);
            Assert.Equal(1, job.Attempts);
        }

        Assert.Equal(1, swept.InboxRows);
        Assert.Equal(0, swept.Jobs);

        // Its command gone, the job goes at the next sweep, with the inbox row that command left.
        Assert.Equal(new SweepResult(1, 1, 0), await Sweeper().SweepAsync(now.AddDays(31), CancellationToken.None));
    }

    [Fact]
    public async Task A_finished_job_whose_stored_command_was_published_is_kept_while_the_command_waits_in_its_queue_which_then_does_not_run_it_again()
    {
        var now = DateTimeOffset.UtcNow;
        var paymentId = Guid.NewGuid();
        Guid jobId;
        await using (var worker = await StartWorkerAsync())
        await using (var api = await fixture.StartApiAsync())
        {
            jobId = (await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(paymentId, now.AddDays(60)))).JobId;
            await using var publisher = await TestPublisher.StartAsync(fixture);
            await publisher.PublishAsync(Charge(paymentId));
            await WaitForStatusAsync(jobId, JobStatus.Succeeded);
        }

        // The job ran early 40 days ago; its inbox row went after 7; its stored command kept it.
        await using (var db = fixture.CreateDbContext())
        {
            var longAgo = now.AddDays(-40);
            await db.Jobs.ExecuteUpdateAsync(set => set
                .SetProperty(j => j.CreatedAt, longAgo).SetProperty(j => j.UpdatedAt, longAgo).SetProperty(j => j.FinishedAt, longAgo));
            await db.Inbox.ExecuteDeleteAsync();
        }

        Assert.Equal(new SweepResult(0, 0, 0), await Sweeper().SweepAsync(DateTimeOffset.UtcNow, CancellationToken.None));

        // Its runAt comes while no worker consumes the queue (a backlog ahead of it, consumers paused):
        // the command is published and waits there, and a sweep runs meanwhile.
        await using (var db = fixture.CreateDbContext())
        {
            await db.ScheduledMessages.ExecuteUpdateAsync(set => set.SetProperty(m => m.DueAt, DateTimeOffset.UtcNow.AddSeconds(-1)));
        }

        await using (var brokerPublisher = new BrokerPublisher(Options.Create(fixture.RabbitOptions())))
        {
            using var dispatcher = new RedeliveryDispatcher(fixture.DbContextFactory(), brokerPublisher, Options.Create(new DispatcherOptions()),
                HostMeters.OwnJobMetrics(), TimeProvider.System, NullLogger<RedeliveryDispatcher>.Instance);
            Assert.Equal(1, await dispatcher.DispatchDueAsync(CancellationToken.None));
        }

        Assert.Equal(1u, await fixture.ReadyAsync(JobKinds.ChargePayment));
        var swept = await Sweeper().SweepAsync(DateTimeOffset.UtcNow, CancellationToken.None);

        // The command is consumed at last: it finds the job's final status and is acked unrun.
        await using (var worker = await StartWorkerAsync())
        {
            await fixture.AssertDrainedAsync(worker, JobKinds.ChargePayment);
        }

        Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString()));
        Assert.Equal(0, swept.Jobs);
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().WithoutRequestBody().SingleAsync(j => j.BusinessKey == paymentId.ToString());
        Assert.Equal((jobId, JobStatus.Succeeded, 1), (job.Id, job.Status, job.Attempts));
    }

    [Fact]
    public async Task A_replay_of_a_long_finished_job_keeps_the_job_as_long_as_its_inbox_row_so_a_resubmission_is_not_left_queued()
    {
        var now = DateTimeOffset.UtcNow;
        var paymentId = Guid.NewGuid();
        await using var worker = await StartWorkerAsync();
        await using var api = await fixture.StartApiAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await publisher.PublishAsync(Charge(paymentId));
        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, (await FindJobAsync(paymentId))?.Status));

        // The job finished 29 days ago; its inbox row was swept after 7.
        await using (var db = fixture.CreateDbContext())
        {
            var longAgo = now.AddDays(-29);
            await db.Jobs.ExecuteUpdateAsync(set => set
                .SetProperty(j => j.CreatedAt, longAgo).SetProperty(j => j.UpdatedAt, longAgo).SetProperty(j => j.FinishedAt, longAgo));
            await db.Inbox.ExecuteDeleteAsync();
        }

        // A copy comes back (moved back from _error, say): the claim finds the job succeeded and records
        // the copy as handled, in an inbox row received now.
        await publisher.PublishAsync(Charge(paymentId));
        await fixture.AssertDrainedAsync(worker, JobKinds.ChargePayment);
        Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString()));

        // Two days on, the job is 31 days old and that inbox row 2 days.
        var swept = await Sweeper().SweepAsync(now.AddDays(2), CancellationToken.None);

        // The payment submitted again through the Api: not a new job that no worker would run.
        await using (var again = await StartWorkerAsync())
        {
            var resubmitted = await SubmitAsync(api, paymentId);
            await fixture.AssertDrainedAsync(again, JobKinds.ChargePayment);
            Assert.NotEqual(JobStatus.Queued, (await api.Client.GetJobAsync(resubmitted)).Status);
        }

        Assert.Equal(new SweepResult(0, 0, 0), swept);

        // Once the inbox row is past its window, both go in one sweep, and a resubmission runs again:
        // the gateway's idempotency key and the ledger's primary key are then all that stop a second effect.
        Assert.Equal(new SweepResult(1, 1, 0), await Sweeper().SweepAsync(now.AddDays(8), CancellationToken.None));
        await using var last = await StartWorkerAsync();
        var rerun = await SubmitAsync(api, paymentId);
        await Eventually.AssertAsync(async () => Assert.Equal(2, _gateway.RequestsFor(paymentId.ToString())));
        await Eventually.AssertAsync(async () =>
        {
            var job = await api.Client.GetJobAsync(rerun);
            Assert.Equal(JobStatus.DeadLettered, job.Status);
            Assert.Contains("pk_ledger_entries", job.LastError, StringComparison.Ordinal);
        });
    }

    private Task<RunningApp> StartWorkerAsync() => fixture.StartWorkerAsync(WorkerSettings.With(_gateway));

    private static ChargePayment Charge(Guid paymentId) =>
        new() { PaymentId = paymentId, AccountId = "acct-42", AmountMinor = 1250, Currency = "EUR" };

    private RetentionSweeper Sweeper() => new(
        fixture.DbContextFactory(), Options.Create(new RetentionOptions()), HostMeters.OwnJobMetrics(), TimeProvider.System, NullLogger<RetentionSweeper>.Instance);

    private static async Task<Guid> SubmitAsync(RunningApp api, Guid paymentId)
    {
        using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        Assert.True(response.IsSuccessStatusCode, $"answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        return (await response.Content.ReadFromJsonAsync<JobAccepted>())!.JobId;
    }

    private async Task<Job?> FindJobAsync(Guid paymentId)
    {
        await using var db = fixture.CreateDbContext();
        return await db.Jobs.AsNoTracking().WithoutRequestBody().SingleOrDefaultAsync(j => j.BusinessKey == paymentId.ToString());
    }

    private async Task WaitForStatusAsync(Guid jobId, string status) =>
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(status, await db.Jobs.Where(j => j.Id == jobId).Select(j => j.Status).SingleAsync());
        }, TimeSpan.FromSeconds(45));

    /// <summary>Makes every stored message due now and wakes the dispatchers, as the Api's NOTIFY does.</summary>
    private async Task MakeDueAsync()
    {
        var now = DateTimeOffset.UtcNow;
        await using var db = fixture.CreateDbContext();
        await db.ScheduledMessages.ExecuteUpdateAsync(set => set.SetProperty(m => m.DueAt, now));
        var dueAt = now.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
        await db.Database.ExecuteSqlInterpolatedAsync($"SELECT pg_notify({RedeliveryStore.Channel}, {dueAt})");
    }
}
