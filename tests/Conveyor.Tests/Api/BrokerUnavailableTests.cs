using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using System.Globalization;
using System.Net;
using Npgsql;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class BrokerUnavailableTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:Port"] = ClosedPort.Number.ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ConnectTimeoutSeconds"] = "2",
        });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    /// <summary>
    /// The Api for a test whose repeat must arrive while the first request still publishes: its publish waits 5 s for
    /// the broker, not the class's 2 s. The repeat is sent once the first request's row is seen; sent more than a second
    /// or so later (a busy machine), it found the row already removed after the failed publish, and was answered as a
    /// new job (its own 503 and no row, or a 400 for its past runAt) instead of as a repeat.
    /// </summary>
    private Task<RunningApp> StartPublishingLongerAsync() => fixture.StartApiAsync(new Dictionary<string, string?>
    {
        ["RabbitMq:Port"] = ClosedPort.Number.ToString(CultureInfo.InvariantCulture),
        ["RabbitMq:ConnectTimeoutSeconds"] = "5",
    });

    [Fact]
    public async Task Submission_is_a_503_with_retry_after_and_leaves_no_job_row()
    {
        var paymentId = Guid.NewGuid();
        var key = $"order-{paymentId}";
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(15));

        using var response = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), key, deadline.Token);

        await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.NotNull(response.Headers.RetryAfter);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.Jobs.CountAsync(j => j.BusinessKey == paymentId.ToString("D")));
        }

        // The key was released with the row: a retry is another 503, not a 422 or a phantom 202.
        using var retry = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), key, deadline.Token);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, retry.StatusCode);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_repeat_while_the_first_request_publishes_is_not_accepted_for_a_job_that_then_vanishes(bool sameRequest)
    {
        await using var api = await StartPublishingLongerAsync();
        var paymentId = Guid.NewGuid();
        var businessKey = paymentId.ToString("D");
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var first = api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), "first-key", deadline.Token);

        // The first request has committed its row and now waits for a confirm that never comes.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.True(await db.Jobs.AnyAsync(j => j.BusinessKey == businessKey, deadline.Token), "the first request's job row");
        }, TimeSpan.FromSeconds(10));

        // A client that gave up waiting repeats it: byte for byte, or the same payment in another body with another key.
        using var repeat = await api.Client.PostJobAsync(
            JobKinds.ChargePayment,
            sameRequest ? JobRequests.ChargePayment(paymentId) : JobRequests.ChargePaymentReordered(paymentId),
            sameRequest ? "first-key" : "second-key",
            deadline.Token);
        using var firstResponse = await first;

        // Before: the repeat got 202 for the job at once, and the first request then removed the row.
        await repeat.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        await firstResponse.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);

        // Nobody was told the job was accepted. Its row is kept with the stored request, since either
        // request's command might still have reached the broker: a later repeat or the stranded-job
        // check publishes it, and the inbox applies it once.
        await AssertQueuedWithItsRequestAsync(businessKey, deadline.Token);

        using var again = await api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), "first-key", deadline.Token);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, again.StatusCode);
    }

    [Fact]
    public async Task A_repeat_with_a_past_runAt_while_the_first_request_publishes_is_not_accepted_for_a_job_that_then_vanishes()
    {
        await using var api = await StartPublishingLongerAsync();
        // The same payment with a runAt already past: only a repeat of an accepted job may name it, and
        // it gets that job, which here may still lose its row when its publish fails.
        var paymentId = Guid.NewGuid();
        var businessKey = paymentId.ToString("D");
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var first = api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), "first-key", deadline.Token);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.True(await db.Jobs.AnyAsync(j => j.BusinessKey == businessKey, deadline.Token), "the first request's job row");
        }, TimeSpan.FromSeconds(10));

        using var repeat = await api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(paymentId, DateTimeOffset.UtcNow.AddMinutes(-1)), "second-key", deadline.Token);
        using var firstResponse = await first;

        // Before: 202 for the job at once, and the first request then removed its row.
        await repeat.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        await firstResponse.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(JobStatus.Queued, (await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == businessKey, deadline.Token)).Status);
        }
    }

    [Fact]
    public async Task A_repeat_with_another_command_while_the_first_request_publishes_is_refused_and_keeps_nothing_alive()
    {
        await using var api = await StartPublishingLongerAsync();
        var paymentId = Guid.NewGuid();
        var businessKey = paymentId.ToString("D");
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var first = api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 100), "first-key", deadline.Token);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.True(await db.Jobs.AnyAsync(j => j.BusinessKey == businessKey, deadline.Token), "the first request's job row");
        }, TimeSpan.FromSeconds(10));

        // Another amount under the same paymentId (ADR 0011): not this job's command, so it neither gets
        // the job nor takes its row out of the first request's reach.
        using var other = await api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 999), "second-key", deadline.Token);
        await other.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        Assert.StartsWith($"paymentId: {businessKey} names job ", (await other.ReadJsonAsync()).GetProperty("detail").GetString(), StringComparison.Ordinal);
        using var firstResponse = await first;
        await firstResponse.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);

        // Nobody was told the job was accepted, and the first request removed its row as it does after a failed publish.
        await using var check = fixture.CreateDbContext();
        Assert.Equal(0, await check.Jobs.CountAsync(j => j.BusinessKey == businessKey, deadline.Token));
    }

    [Fact]
    public async Task A_first_request_whose_row_waited_past_its_publish_budget_keeps_the_row_a_later_repeat_is_answered_with()
    {
        // A repeat answers with a queued job, unsecured, once the publish budget (here 2 s to publish and
        // 10 s to remove the row) has passed since the row's created_at. The first request's insert waits
        // here for 11 s (another transaction holds its business key), so its publish fails after that
        // budget: removing its row then could take a job from under a repeat answered 202 meanwhile.
        var paymentId = Guid.NewGuid();
        var businessKey = paymentId.ToString("D");
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await using var holder = new NpgsqlConnection(fixture.ConnectionString);
        await holder.OpenAsync(deadline.Token);
        await using var hold = await holder.BeginTransactionAsync(deadline.Token);
        await using (var insert = new NpgsqlCommand(
            "INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at) VALUES ($1, $2, $3, 'queued', 0, now(), now())", holder, hold))
        {
            insert.Parameters.AddWithValue(Guid.NewGuid());
            insert.Parameters.AddWithValue(JobKinds.ChargePayment);
            insert.Parameters.AddWithValue(businessKey);
            await insert.ExecuteNonQueryAsync(deadline.Token);
        }

        var first = _api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), "first-key", deadline.Token);
        await fixture.WaitForLockWaitersAsync(1);
        await Task.Delay(TimeSpan.FromSeconds(11), deadline.Token);
        await hold.RollbackAsync(deadline.Token);

        using (var firstResponse = await first)
        {
            await firstResponse.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        }

        await AssertQueuedWithItsRequestAsync(businessKey, deadline.Token);

        // The same payment in other bytes gets the job, and the job stays for the stranded-job check to publish.
        using var repeat = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePaymentReordered(paymentId), "second-key", deadline.Token);
        Assert.Equal(HttpStatusCode.Accepted, repeat.StatusCode);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, await check.Jobs.CountAsync(j => j.BusinessKey == businessKey && j.Status == JobStatus.Queued, deadline.Token));
    }

    [Fact]
    public async Task Without_the_broker_the_Api_still_answers_reads_and_stays_live_while_not_ready()
    {
        // What the Kubernetes probes rely on (deploy/k8s/README.md): readiness follows /health/live, so
        // a broker outage leaves the Api in its Service, answering reads and 503s with Retry-After.
        using var live = await _api.Client.GetAsync(new Uri("/health/live", UriKind.Relative));
        using var ready = await _api.Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
        using var jobs = await _api.Client.GetAsync(new Uri("/api/jobs", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, live.StatusCode);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
        Assert.Equal(HttpStatusCode.OK, jobs.StatusCode);
    }

    /// <summary>The job's row is kept, queued with its stored request, for a repeat or the stranded-job check to publish.</summary>
    private async Task AssertQueuedWithItsRequestAsync(string businessKey, CancellationToken cancellationToken)
    {
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == businessKey, cancellationToken);
        Assert.Equal(JobStatus.Queued, job.Status);
        Assert.NotNull(job.RequestBody);
    }
}
