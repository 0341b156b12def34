using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary>
/// Jobs submitted with <c>runAt</c>, and cancelling jobs before they run. Jobs are scheduled an hour
/// ahead, so the dispatcher of the running worker cannot take them while the test looks at them or
/// cancels them, and are made due by moving their stored due time (<see cref="MakeDueAsync"/>).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class ScheduledJobTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
    }

    public async Task DisposeAsync() => await _gateway.DisposeAsync();

    [Fact]
    public async Task A_job_with_runAt_is_scheduled_and_runs_once_when_due()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        await using var api = await fixture.StartApiAsync();
        var paymentId = Guid.NewGuid();
        var runAt = DateTimeOffset.UtcNow.AddHours(1);

        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(paymentId, runAt));

        Assert.Equal(JobStatus.Scheduled, accepted.Status);
        var scheduled = await api.Client.GetJobAsync(accepted.JobId);
        Assert.Equal(JobStatus.Scheduled, scheduled.Status);
        Assert.Equal(runAt.ToUnixTimeMilliseconds(), scheduled.NextAttemptAt?.ToUnixTimeMilliseconds());
        await using (var db = fixture.CreateDbContext())
        {
            var message = await db.ScheduledMessages.AsNoTracking().SingleAsync();
            Assert.Equal($"job:{accepted.JobId}", message.DedupeKey);
            Assert.Equal(JobKinds.ChargePayment, message.Destination);
            Assert.Equal("application/vnd.masstransit+json", message.ContentType);
            using var envelope = JsonDocument.Parse(message.Body);
            Assert.Equal("urn:message:Conveyor.Contracts.Payments:ChargePayment", envelope.RootElement.GetProperty("messageType")[0].GetString());
            Assert.Equal(paymentId, envelope.RootElement.GetProperty("message").GetProperty("paymentId").GetGuid());
            Assert.Equal(runAt.ToUnixTimeMilliseconds(), message.DueAt.ToUnixTimeMilliseconds());
        }

        var dueAt = await MakeDueAsync();
        var done = await WaitForStatusAsync(api, accepted.JobId, JobStatus.Succeeded);

        Assert.True(done.FinishedAt >= dueAt, $"finished {done.FinishedAt:O}, due {dueAt:O}");
        Assert.Equal(1, done.Attempts);
        Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString()));
        Assert.Equal(1, _gateway.SuccessfulRequestsFor(paymentId.ToString()));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }
    }

    [Fact]
    public async Task A_scheduled_job_reaches_the_worker_with_its_job_id()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        await using var api = await fixture.StartApiAsync();
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));
        // Without its row the worker creates one, under the id the envelope's headers carry.
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Jobs.Where(j => j.Id == accepted.JobId).ExecuteDeleteAsync());
        }

        await MakeDueAsync();
        await WaitForStatusAsync(api, accepted.JobId, JobStatus.Succeeded);
    }

    [Fact]
    public async Task A_scheduled_job_cancelled_before_it_is_due_never_runs()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        await using var api = await fixture.StartApiAsync();
        var paymentId = Guid.NewGuid();
        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(paymentId, runAt));

        using (var response = await api.Client.CancelJobAsync(accepted.JobId))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var cancelled = await response.Content.ReadFromJsonAsync<JobDetails>();
            Assert.Equal(JobStatus.Cancelled, cancelled?.Status);
            Assert.Null(cancelled?.NextAttemptAt);
        }

        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }

        // Cancelling again changes nothing and says so.
        using (var again = await api.Client.CancelJobAsync(accepted.JobId))
        {
            Assert.Equal(HttpStatusCode.OK, again.StatusCode);
        }

        // Everything scheduled is made due, and a job scheduled after the cancelled one has run: the
        // dispatcher had its chance at whatever the cancel might have left behind.
        var later = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt.AddSeconds(1)));
        await MakeDueAsync();
        await WaitForStatusAsync(api, later.JobId, JobStatus.Succeeded);

        Assert.Equal(JobStatus.Cancelled, (await api.Client.GetJobAsync(accepted.JobId)).Status);
        Assert.Equal(0, _gateway.RequestsFor(paymentId.ToString()));
    }

    [Fact]
    public async Task A_cancel_waits_for_a_dispatch_that_holds_the_stored_command_and_writes_the_job_instead_of_deadlocking()
    {
        await using var api = await fixture.StartApiAsync();
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));

        // What the dispatcher does with a due row whose publish failed: the row locked, then its job written.
        await using var dispatcher = new NpgsqlConnection(fixture.ConnectionString);
        await dispatcher.OpenAsync();
        await using var transaction = await dispatcher.BeginTransactionAsync();
        await using (var lockRow = new NpgsqlCommand("SELECT 1 FROM scheduled_messages WHERE dedupe_key = $1 FOR UPDATE", dispatcher, transaction))
        {
            lockRow.Parameters.AddWithValue($"job:{accepted.JobId}");
            Assert.Equal(1, await lockRow.ExecuteScalarAsync());
        }

        var cancel = api.Client.CancelJobAsync(accepted.JobId);
        await fixture.WaitForLockWaitersAsync(1);
        await using (var writeJob = new NpgsqlCommand(
            "UPDATE jobs SET last_error = 'PublishRefused: test', updated_at = now() WHERE id = $1 AND status = 'scheduled'", dispatcher, transaction))
        {
            writeJob.Parameters.AddWithValue(accepted.JobId);
            Assert.Equal(1, await writeJob.ExecuteNonQueryAsync());
        }

        await transaction.CommitAsync();
        using var response = await cancel;
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(JobStatus.Cancelled, (await response.Content.ReadFromJsonAsync<JobDetails>())?.Status);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }

    /// <summary>
    /// A cancel answered by an Api replica whose clock is two minutes behind the one that took the job: the job's
    /// times still read in order (createdAt ≤ finishedAt ≤ updatedAt, and updatedAt only grows), as every other write
    /// of a job's times keeps them. Before, the cancel stamped both with its own clock: finished before it was created.
    /// </summary>
    [Fact]
    public async Task A_cancel_by_an_api_whose_clock_is_behind_keeps_the_jobs_times_in_order()
    {
        await using var api = await fixture.StartApiAsync();
        await using var behind = await fixture.StartApiAsync(
            configure: builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromMinutes(-2))));
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));
        var before = await api.Client.GetJobAsync(accepted.JobId);

        using var response = await behind.Client.CancelJobAsync(accepted.JobId);

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var cancelled = await response.Content.ReadFromJsonAsync<JobDetails>();
        Assert.Equal(JobStatus.Cancelled, cancelled?.Status);
        Assert.True(cancelled?.FinishedAt >= cancelled?.CreatedAt, $"created {cancelled?.CreatedAt:O}, finished {cancelled?.FinishedAt:O}");
        Assert.True(cancelled?.UpdatedAt > before.UpdatedAt, $"updated {before.UpdatedAt:O}, then {cancelled?.UpdatedAt:O}");
        Assert.True(cancelled?.FinishedAt <= cancelled?.UpdatedAt, $"finished {cancelled?.FinishedAt:O}, updated {cancelled?.UpdatedAt:O}");
    }

    [Fact]
    public async Task A_cancel_of_a_job_whose_row_another_transaction_holds_answers_409_busy_and_changes_nothing()
    {
        await using var api = await fixture.StartApiAsync();
        var job = new Job
        {
            Id = Guid.CreateVersion7(),
            Kind = JobKinds.ChargePayment,
            BusinessKey = Guid.NewGuid().ToString("D"),
            Status = JobStatus.Queued,
            CreatedAt = DateTimeOffset.UtcNow,
            UpdatedAt = DateTimeOffset.UtcNow,
            RequestBody = "{}"u8.ToArray(),
        };
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.Add(job);
            await db.SaveChangesAsync();
        }

        // What a worker's inbox transaction does while an attempt of the job runs: the job's row locked.
        await using (var held = await HeldJobRow.LockAsync(fixture, job.Id))
        {
            using var busy = await api.Client.CancelJobAsync(job.Id);
            await busy.AssertProblemAsync(StatusCodes.Status409Conflict);
            Assert.Equal("Job busy", (await busy.ReadJsonAsync()).GetProperty("title").GetString());
            Assert.NotNull(busy.Headers.RetryAfter);
            await held.RollbackAsync();
        }

        await using (var db = fixture.CreateDbContext())
        {
            var row = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == job.Id);
            Assert.Equal(JobStatus.Queued, row.Status);
            Assert.Equal(job.RequestBody, row.RequestBody);
            Assert.Null(row.FinishedAt);
        }

        // Released, the same cancel goes through.
        using var response = await api.Client.CancelJobAsync(job.Id);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(JobStatus.Cancelled, (await response.Content.ReadFromJsonAsync<JobDetails>())?.Status);
    }

    [Fact]
    public async Task A_queued_job_cancelled_while_no_worker_runs_is_skipped_when_one_starts()
    {
        // A worker declares the queues and leaves, so the command waits in charge-payment.
        await (await fixture.StartWorkerAsync(WorkerSettings.With(_gateway))).DisposeAsync();
        await using var api = await fixture.StartApiAsync();
        var paymentId = Guid.NewGuid();
        var queued = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        Assert.Equal(JobStatus.Queued, queued.Status);

        using (var response = await api.Client.CancelJobAsync(queued.JobId))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal(JobStatus.Cancelled, (await response.Content.ReadFromJsonAsync<JobDetails>())?.Status);
        }

        // Its stored request goes with it: nothing will publish a cancelled job again (ADR 0007).
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Null(await db.Jobs.Where(j => j.Id == queued.JobId).Select(j => j.RequestBody).SingleAsync());
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        var next = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        await WaitForStatusAsync(api, next.JobId, JobStatus.Succeeded);
        // The cancelled command was handled too (acked without running), and nothing waits behind it.
        await fixture.AssertDrainedAsync(worker, JobKinds.ChargePayment);

        var cancelled = await api.Client.GetJobAsync(queued.JobId);
        Assert.Equal(JobStatus.Cancelled, cancelled.Status);
        Assert.Equal(0, cancelled.Attempts);
        Assert.Equal(0, _gateway.RequestsFor(paymentId.ToString()));

        // Too late for a job that ran.
        using var tooLate = await api.Client.CancelJobAsync(next.JobId);
        await tooLate.AssertProblemAsync(StatusCodes.Status409Conflict);
        Assert.Equal(JobStatus.Succeeded, (await api.Client.GetJobAsync(next.JobId)).Status);
    }

    [Fact]
    public async Task Cancelling_an_unknown_job_is_a_404_problem()
    {
        await using var api = await fixture.StartApiAsync();

        using var response = await api.Client.CancelJobAsync(Guid.NewGuid());

        await response.AssertProblemAsync(StatusCodes.Status404NotFound);
    }

    public static TheoryData<string> InvalidRunAts => new()
    {
        "\"2001-01-01T00:00:00Z\"",
        $"\"{DateTimeOffset.UtcNow.AddDays(366):O}\"",
        // No offset: whose 9 o'clock?
        $"\"{DateTime.UtcNow.AddHours(1):yyyy-MM-ddTHH:mm:ss}\"",
        "\"tomorrow\"",
        "1767225600",
        "\"\"",
    };

    [Theory]
    [MemberData(nameof(InvalidRunAts))]
    public async Task A_runAt_that_is_not_a_future_time_with_an_offset_is_a_400_naming_it(string runAt)
    {
        await using var api = await fixture.StartApiAsync();
        var json = $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-1","amountMinor":100,"currency":"EUR","runAt":{{runAt}}}""";

        using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, json);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(["runAt"], await response.ReadErrorFieldsAsync());
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task A_scheduled_request_sent_again_after_its_runAt_gets_its_job_and_a_new_one_with_that_time_is_refused()
    {
        // No worker: the jobs stay scheduled however late it gets. The Api's clock is moved past runAt rather than
        // waited past it: with runAt two seconds ahead, a busy machine answered the first submission after it (400).
        var clock = new MovableClock();
        await using var api = await fixture.StartApiAsync(configure: builder => builder.Services.AddSingleton<TimeProvider>(clock));
        var runAt = DateTimeOffset.UtcNow.AddMinutes(10);
        var single = JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt);
        var batch = JobBatchTests.Batch([JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt), JobRequests.ChargePayment(Guid.NewGuid())]);
        var singleKey = $"sched-{Guid.NewGuid()}";
        var batchKey = $"sched-batch-{Guid.NewGuid()}";
        Guid singleJob;
        using (var first = await api.Client.PostJobAsync(JobKinds.ChargePayment, single, singleKey))
        {
            Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
            singleJob = (await first.Content.ReadFromJsonAsync<JobAccepted>())!.JobId;
        }

        IReadOnlyList<JobBatchResult> batchJobs;
        using (var first = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, batch, batchKey))
        {
            Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
            batchJobs = (await first.Content.ReadFromJsonAsync<JobBatchAccepted>())!.Jobs;
        }

        // The client lost its answers and sends the same requests again, after their time has come.
        clock.Advance(TimeSpan.FromMinutes(11));
        using (var again = await api.Client.PostJobAsync(JobKinds.ChargePayment, single, singleKey))
        {
            Assert.True(again.StatusCode == HttpStatusCode.Accepted, await again.Content.ReadAsStringAsync());
            Assert.Equal(singleJob, (await again.Content.ReadFromJsonAsync<JobAccepted>())!.JobId);
        }

        using (var again = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, batch, batchKey))
        {
            Assert.True(again.StatusCode == HttpStatusCode.Accepted, await again.Content.ReadAsStringAsync());
            Assert.Equal(batchJobs.Select(j => j.JobId), (await again.Content.ReadFromJsonAsync<JobBatchAccepted>())!.Jobs.Select(j => j.JobId));
        }

        // A job nobody submitted before cannot have that time, alone or in a batch.
        using (var late = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt)))
        {
            await late.AssertProblemAsync(StatusCodes.Status400BadRequest);
            Assert.Contains("runAt", await late.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        var mixed = JobBatchTests.Batch([JobRequests.ChargePayment(Guid.NewGuid()), JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt)]);
        using (var late = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, mixed))
        {
            await late.AssertProblemAsync(StatusCodes.Status400BadRequest);
            Assert.Contains("jobs[1].runAt", await late.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        await using var db = fixture.CreateDbContext();
        // Two scheduled, one queued (the batch's immediate job); the refused batch left nothing.
        Assert.Equal(3, await db.Jobs.CountAsync());
        Assert.Equal(2, await db.ScheduledMessages.CountAsync());
    }

    [Fact]
    public async Task A_runAt_does_not_hide_errors_in_the_command_fields()
    {
        await using var api = await fixture.StartApiAsync();
        var json = $$"""{"paymentId":"{{Guid.NewGuid()}}","amountMinor":100,"currency":"EUR","runAt":"2001-01-01T00:00:00Z"}""";

        using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, json);

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(["accountId", "runAt"], (await response.ReadErrorFieldsAsync()).Order(StringComparer.Ordinal));
    }

    /// <summary>
    /// Makes every scheduled message due now, and wakes the dispatchers as the Api does when it stores
    /// one (NOTIFY); returns the due time set.
    /// </summary>
    private async Task<DateTimeOffset> MakeDueAsync()
    {
        var now = DateTimeOffset.UtcNow;
        await using var db = fixture.CreateDbContext();
        await db.ScheduledMessages.ExecuteUpdateAsync(set => set.SetProperty(m => m.DueAt, now));
        var dueAt = now.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
        await db.Database.ExecuteSqlInterpolatedAsync($"SELECT pg_notify({Conveyor.Worker.Redelivery.RedeliveryStore.Channel}, {dueAt})");
        return now;
    }

    private static async Task<JobDetails> WaitForStatusAsync(RunningApp api, Guid jobId, string status)
    {
        JobDetails? job = null;
        await Eventually.AssertAsync(async () =>
        {
            job = await api.Client.GetJobAsync(jobId);
            Assert.Equal(status, job.Status);
        }, TimeSpan.FromSeconds(45));
        return job!;
    }
}
