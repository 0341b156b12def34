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
}
