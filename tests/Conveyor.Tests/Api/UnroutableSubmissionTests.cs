using System.Net;
using System.Net.Http.Json;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Api;

/// <summary>
/// A vhost where no worker has declared the job queues yet (the Api deployed first, or a queue deleted):
/// the broker confirms a publish that no queue takes and drops it. The Api publishes mandatory, so such
/// a submission is refused, not accepted for a command that no longer exists.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class UnroutableSubmissionTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_submission_no_queue_takes_is_a_503_with_no_job_row_and_is_accepted_once_a_worker_has_declared_its_queue()
    {
        await using var scratch = await fixture.ScratchVhostAsync("unroutable");
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["RabbitMq:VirtualHost"] = scratch.Name });
        var paymentId = Guid.NewGuid();
        var businessKey = paymentId.ToString("D");

        using (var refused = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId)))
        {
            await refused.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
            Assert.NotNull(refused.Headers.RetryAfter);
        }

        await using (var db = fixture.CreateDbContext())
        {
            Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == businessKey), "the refused submission's job row");
        }

        // A worker declares the queue and binds it; the same submission again is accepted and runs.
        await using var worker = await fixture.StartWorkerAsync(scratch.WorkerSettingsWith());
        using var accepted = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        var jobId = (await accepted.Content.ReadFromJsonAsync<JobAccepted>())!.JobId;
        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, (await api.Client.GetJobAsync(jobId)).Status), TimeSpan.FromSeconds(30));
    }
}
