using System.Net;
using System.Net.Http.Json;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Tests.Observability;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Conveyor.Tests.Api;

[Collection(AloneCollection.Name)]
public sealed class JobWaitTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// A client waiting on a job must not hold up a shutdown of the Api. The host here gives in-flight
    /// requests 3 s before it aborts them, far less than the 30 s wait: the answer arrives only because
    /// the wait ends when the Api begins to stop.
    /// </summary>
    [Fact]
    public async Task A_waiting_client_gets_the_job_as_it_is_when_the_api_stops()
    {
        var api = await fixture.StartApiAsync(configure: builder =>
            builder.Services.Configure<HostOptions>(options => options.ShutdownTimeout = TimeSpan.FromSeconds(3)));
        try
        {
            // No worker runs: the job stays queued.
            var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
            using var waiter = new HttpClient { BaseAddress = api.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
            waiter.DefaultRequestHeaders.Add("X-Api-Key", TestKeys.Admin);
            var waiting = waiter.GetAsync(new Uri($"/api/jobs/{accepted.JobId}?waitSeconds=30", UriKind.Relative));

            // The wait is under way once the Api counts it in flight, beside the scrape that asks.
            await Eventually.AssertAsync(async () =>
            {
                var metrics = await api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
                Assert.True(PrometheusText.Sum(metrics, "http_server_active_requests") >= 2, "the wait is not in flight yet");
            });
            await api.StopAsync();

            using var response = await waiting;
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var job = await response.Content.ReadFromJsonAsync<JobDetails>();
            Assert.Equal((accepted.JobId, JobStatus.Queued), (job!.JobId, job.Status));
        }
        finally
        {
            await api.DisposeAsync();
        }
    }

    /// <summary>
    /// Beyond <c>Jobs:MaxConcurrentWaits</c> a wait is answered at once with the job as it is, and says so; the waits
    /// under way go on, and once they have ended their slots serve a new wait.
    /// </summary>
    [Fact]
    public async Task A_wait_beyond_the_cap_is_answered_at_once_with_the_job_and_says_so()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Jobs:MaxConcurrentWaits"] = "2" });
        var waits = api.Services.GetRequiredService<JobWaitLimit>();
        // No worker runs: the jobs stay queued until cancelled.
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        var first = api.Client.GetAsync(WaitFor(accepted.JobId));
        var second = api.Client.GetAsync(WaitFor(accepted.JobId));
        await HeldAsync(waits, 2);

        using (var third = await api.Client.GetAsync(WaitFor(accepted.JobId)))
        {
            Assert.Equal(JobWaitLimit.TooManyWaits, Assert.Single(SkippedHeaderOf(third)));
            await AssertJobAsync(third, accepted.JobId, JobStatus.Queued);
        }

        Assert.False(first.IsCompleted, "the first wait was answered");
        Assert.False(second.IsCompleted, "the second wait was answered");
        var metrics = await api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(2, PrometheusText.Sum(metrics, "conveyor_api_job_waits"));
        Assert.Equal(1, PrometheusText.Sum(metrics, "conveyor_api_job_waits_skipped_total"));

        // The job ends: both waits answer with it, as waits, and give their slots back.
        using (var cancelled = await api.Client.CancelJobAsync(accepted.JobId))
        {
            Assert.Equal(HttpStatusCode.OK, cancelled.StatusCode);
        }

        foreach (var waiting in new[] { first, second })
        {
            using var answer = await waiting;
            Assert.Empty(SkippedHeaderOf(answer));
            await AssertJobAsync(answer, accepted.JobId, JobStatus.Cancelled);
        }

        await HeldAsync(waits, 0);
        await AssertANewWaitWaitsAsync(api, waits);
    }

    /// <summary>A client that goes away while its wait is held gives its slot back.</summary>
    [Fact]
    public async Task A_client_that_goes_away_gives_its_wait_back()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Jobs:MaxConcurrentWaits"] = "1" });
        var waits = api.Services.GetRequiredService<JobWaitLimit>();
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        using var goesAway = new CancellationTokenSource();
        var abandoned = api.Client.GetAsync(WaitFor(accepted.JobId), goesAway.Token);
        await HeldAsync(waits, 1);
        using (var skipped = await api.Client.GetAsync(WaitFor(accepted.JobId)))
        {
            Assert.Equal(JobWaitLimit.TooManyWaits, Assert.Single(SkippedHeaderOf(skipped)));
        }

        await goesAway.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => abandoned);
        await HeldAsync(waits, 0);
        await AssertANewWaitWaitsAsync(api, waits);
    }

    /// <summary>A wait on a new job holds a slot and its answer until the job ends (cancelled here), without the skip header.</summary>
    private static async Task AssertANewWaitWaitsAsync(RunningApp api, JobWaitLimit waits)
    {
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        var waiting = api.Client.GetAsync(WaitFor(accepted.JobId));
        await HeldAsync(waits, 1);
        Assert.False(waiting.IsCompleted, "the new wait was answered");
        using (var cancelled = await api.Client.CancelJobAsync(accepted.JobId))
        {
            Assert.Equal(HttpStatusCode.OK, cancelled.StatusCode);
        }

        using var answer = await waiting;
        Assert.Empty(SkippedHeaderOf(answer));
        await AssertJobAsync(answer, accepted.JobId, JobStatus.Cancelled);
        await HeldAsync(waits, 0);
    }

    private static Uri WaitFor(Guid jobId) => new($"/api/jobs/{jobId}?waitSeconds=30", UriKind.Relative);

    private static Task HeldAsync(JobWaitLimit waits, int count) =>
        Eventually.AssertAsync(() =>
        {
            Assert.Equal(count, waits.Current);
            return Task.CompletedTask;
        });

    private static IEnumerable<string> SkippedHeaderOf(HttpResponseMessage response) =>
        response.Headers.TryGetValues(JobWaitLimit.SkippedHeader, out var values) ? values : [];

    private static async Task AssertJobAsync(HttpResponseMessage response, Guid jobId, string status)
    {
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var job = await response.Content.ReadFromJsonAsync<JobDetails>();
        Assert.Equal((jobId, status), (job!.JobId, job.Status));
    }
}
