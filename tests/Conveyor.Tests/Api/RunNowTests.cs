using Conveyor.Api.Backpressure;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using System.Net;
using System.Net.Http.Json;

namespace Conveyor.Tests.Api;

/// <summary>
/// <c>POST /api/jobs/{jobId}/run-now</c>: a job waiting in the store (a delayed redelivery an hour away, a runAt an hour
/// ahead) is published at once by the running worker's dispatcher and runs once, keeping its retry budget.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class RunNowTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
    }

    public async Task DisposeAsync() => await _gateway.DisposeAsync();

    [Fact]
    public async Task A_job_whose_redelivery_is_an_hour_away_runs_now_once_and_a_repeat_is_a_409_naming_its_status()
    {
        _gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(HourLongRedeliveries(redeliveries: 2));
        await using var api = await fixture.StartApiAsync();
        var paymentId = Guid.NewGuid();
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        var waiting = await fixture.WaitForJobAsync(paymentId, JobStatus.RetryScheduled);
        Assert.True(waiting.NextAttemptAt > DateTimeOffset.UtcNow.AddMinutes(30), $"next attempt at {waiting.NextAttemptAt:O}");

        using (var response = await RunNowAsync(api, accepted.JobId))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            Assert.Equal($"/api/jobs/{accepted.JobId}", response.Headers.Location?.OriginalString);
            var job = await response.Content.ReadFromJsonAsync<JobDetails>();
            Assert.NotNull(job);
            Assert.Equal(accepted.JobId, job.JobId);
            Assert.True(job.NextAttemptAt < waiting.NextAttemptAt!.Value.AddMinutes(-30), $"next attempt at {job.NextAttemptAt:O}");
        }

        var done = await fixture.WaitForJobAsync(paymentId, JobStatus.Succeeded);
        Assert.Equal(2, done.Attempts);
        Assert.Equal(2, _gateway.RequestsFor(paymentId.ToString()));
        Assert.Equal(1, _gateway.SuccessfulRequestsFor(paymentId.ToString()));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == paymentId));
        }

        using var again = await RunNowAsync(api, accepted.JobId);
        await again.AssertProblemAsync(StatusCodes.Status409Conflict);
        var problem = await again.ReadJsonAsync();
        Assert.Equal("Job not waiting", problem.GetProperty("title").GetString());
        Assert.Equal(JobStatus.Succeeded, problem.GetProperty("jobStatus").GetString());
    }

    [Fact]
    public async Task A_redelivery_run_now_keeps_its_count_so_the_last_one_that_fails_dead_letters_the_job()
    {
        _gateway.FailNext(2, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(HourLongRedeliveries(redeliveries: 1));
        await using var api = await fixture.StartApiAsync();
        var paymentId = Guid.NewGuid();
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        await fixture.WaitForJobAsync(paymentId, JobStatus.RetryScheduled);

        using (var response = await RunNowAsync(api, accepted.JobId))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }

        // The one redelivery allowed is spent: a fresh budget would have stored another, an hour away.
        var dead = await fixture.WaitForJobAsync(paymentId, JobStatus.DeadLettered);
        Assert.Equal(2, dead.Attempts);
        Assert.Equal(2, _gateway.RequestsFor(paymentId.ToString()));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }

        using var again = await RunNowAsync(api, accepted.JobId);
        await again.AssertProblemAsync(StatusCodes.Status409Conflict);
        var problem = await again.ReadJsonAsync();
        Assert.Equal(JobStatus.DeadLettered, problem.GetProperty("jobStatus").GetString());
        Assert.Contains($"{JobKinds.ChargePayment}_error", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_job_scheduled_an_hour_ahead_runs_now_once()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        await using var api = await fixture.StartApiAsync();
        var paymentId = Guid.NewGuid();
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(paymentId, DateTimeOffset.UtcNow.AddHours(1)));
        Assert.Equal(JobStatus.Scheduled, accepted.Status);

        using (var response = await RunNowAsync(api, accepted.JobId))
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            var job = await response.Content.ReadFromJsonAsync<JobDetails>();
            Assert.NotNull(job);
            Assert.True(job.NextAttemptAt < DateTimeOffset.UtcNow.AddMinutes(30), $"next attempt at {job.NextAttemptAt:O}");
        }

        var done = await fixture.WaitForJobAsync(paymentId, JobStatus.Succeeded);
        Assert.Equal(1, done.Attempts);
        Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString()));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }

    [Fact]
    public async Task A_queued_job_is_a_409_a_full_queue_a_429_that_changes_nothing_an_unknown_job_a_404_and_a_bad_id_a_400()
    {
        // The worker declares the queue, then stops: what the Api publishes stays there.
        await (await fixture.StartWorkerAsync(WorkerSettings.With(_gateway))).DisposeAsync();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Backpressure:RefreshMilliseconds"] = "100",
            ["Backpressure:MaxQueueDepth:charge-payment"] = "1",
        });
        var queued = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        using (var response = await RunNowAsync(api, queued.JobId))
        {
            await response.AssertProblemAsync(StatusCodes.Status409Conflict);
            Assert.Equal(JobStatus.Queued, (await response.ReadJsonAsync()).GetProperty("jobStatus").GetString());
            Assert.Null(response.Headers.RetryAfter);
        }

        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        var scheduled = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt));
        await Eventually.AssertAsync(() =>
            Assert.True(HostMeters.QueueGauge(api, BrokerPressureMonitor.DepthInstrument, JobKinds.ChargePayment) >= 1));
        using (var full = await RunNowAsync(api, scheduled.JobId))
        {
            await full.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            Assert.Equal("Job queue full", (await full.ReadJsonAsync()).GetProperty("title").GetString());
            Assert.NotNull(full.Headers.RetryAfter);
        }

        var left = await api.Client.GetJobAsync(scheduled.JobId);
        Assert.Equal(JobStatus.Scheduled, left.Status);
        Assert.Equal(runAt.ToUnixTimeMilliseconds(), left.NextAttemptAt?.ToUnixTimeMilliseconds());
        await using (var db = fixture.CreateDbContext())
        {
            var stored = await db.ScheduledMessages.AsNoTracking().SingleAsync();
            Assert.Equal(runAt.ToUnixTimeMilliseconds(), stored.DueAt.ToUnixTimeMilliseconds());
        }

        using (var unknown = await RunNowAsync(api, Guid.NewGuid()))
        {
            await unknown.AssertProblemAsync(StatusCodes.Status404NotFound);
        }

        using var bad = await api.Client.PostAsync(new Uri("/api/jobs/not-a-job/run-now", UriKind.Relative), content: null);
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("jobId", await bad.ReadErrorFieldsAsync());
    }

    [Fact]
    public async Task The_redeliveries_an_outage_left_waiting_run_now_up_to_the_limit_and_the_rest_at_the_next_request()
    {
        _gateway.FailNext(3, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(HourLongRedeliveries(redeliveries: 2));
        await using var api = await fixture.StartApiAsync();
        var payments = Enumerable.Range(0, 3).Select(_ => Guid.NewGuid()).ToList();
        foreach (var payment in payments)
        {
            await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(payment));
        }

        foreach (var payment in payments)
        {
            await fixture.WaitForJobAsync(payment, JobStatus.RetryScheduled);
        }

        // Of another status: not touched by a run-now of the retries.
        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        var scheduled = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt));

        var first = await RunManyNowAsync(api, $$"""{"kind":"{{JobKinds.ChargePayment}}","limit":2}""");
        Assert.Equal(new JobsRunNow(JobKinds.ChargePayment, JobStatus.RetryScheduled, 2, 1), first);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(2, await db.Jobs.CountAsync(j => j.Kind == JobKinds.ChargePayment && j.Status == JobStatus.Succeeded));
        });

        var second = await RunManyNowAsync(api, $$"""{"kind":"{{JobKinds.ChargePayment}}","status":"retry-scheduled"}""");
        Assert.Equal(new JobsRunNow(JobKinds.ChargePayment, JobStatus.RetryScheduled, 1, 0), second);
        foreach (var payment in payments)
        {
            var done = await fixture.WaitForJobAsync(payment, JobStatus.Succeeded);
            Assert.Equal(2, done.Attempts);
            Assert.Equal(1, _gateway.SuccessfulRequestsFor(payment.ToString()));
        }

        var left = await api.Client.GetJobAsync(scheduled.JobId);
        Assert.Equal(JobStatus.Scheduled, left.Status);
        Assert.Equal(runAt.ToUnixTimeMilliseconds(), left.NextAttemptAt?.ToUnixTimeMilliseconds());
        Assert.Equal(new JobsRunNow(JobKinds.ChargePayment, JobStatus.RetryScheduled, 0, 0),
            await RunManyNowAsync(api, $$"""{"kind":"{{JobKinds.ChargePayment}}"}"""));

        using var bad = await api.Client.PostAsync(new Uri("/api/jobs/run-now", UriKind.Relative),
            JobRequests.Json("""{"kind":"charge-payments","status":"queued","limit":0,"dryRun":true}""", "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Equal(new HashSet<string>(["kind", "status", "limit", "dryRun"]), await bad.ReadErrorFieldsAsync());
    }

    /// <summary>A run-now field given twice is named, as a job's field is.</summary>
    [Theory]
    [InlineData("""{"kind":"charge-payment","limit":1,"limit":2}""", "limit", "Is given more than once")]
    [InlineData("""{"kind":"charge-payment","status":{"a":[{"b":1,"b":2}]}}""", "status", "Holds an object with a field given more than once")]
    public async Task A_run_now_field_given_twice_is_a_400_naming_it(string json, string field, string why)
    {
        await using var api = await fixture.StartApiAsync();

        using var response = await api.Client.PostAsync(new Uri("/api/jobs/run-now", UriKind.Relative), JobRequests.Json(json, "application/json"));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(new HashSet<string>([field]), await response.ReadErrorFieldsAsync());
        Assert.Contains(why, await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    private Dictionary<string, string?> HourLongRedeliveries(int redeliveries) => WorkerSettings.With(_gateway).Override(
        ("Consumers:ChargePayment:RetryLimit", "0"),
        ("Consumers:ChargePayment:RedeliveryLimit", redeliveries.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "3600000"),
        ("Consumers:ChargePayment:RedeliveryMaxDelayMilliseconds", "3600000"));

    private static async Task<JobsRunNow> RunManyNowAsync(RunningApp api, string json)
    {
        using var response = await api.Client.PostAsync(new Uri("/api/jobs/run-now", UriKind.Relative), JobRequests.Json(json, "application/json"));
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        var summary = await response.Content.ReadFromJsonAsync<JobsRunNow>();
        Assert.NotNull(summary);
        return summary;
    }

    private static Task<HttpResponseMessage> RunNowAsync(RunningApp api, Guid jobId) =>
        api.Client.PostAsync(new Uri($"/api/jobs/{jobId}/run-now", UriKind.Relative), content: null);
}
