using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class JobSubmissionTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync();
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Theory]
    [InlineData(JobKinds.ChargePayment)]
    [InlineData(JobKinds.DeliverWebhook)]
    [InlineData(JobKinds.GenerateReport)]
    public async Task Valid_job_is_accepted_recorded_and_readable(string kind)
    {
        var json = kind switch
        {
            JobKinds.ChargePayment => JobRequests.ChargePayment(Guid.NewGuid()),
            JobKinds.DeliverWebhook => JobRequests.DeliverWebhook(Guid.NewGuid()),
            _ => JobRequests.GenerateReport(Guid.NewGuid()),
        };

        using var response = await _api.Client.PostJobAsync(kind, json);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var accepted = await response.Content.ReadFromJsonAsync<JobAccepted>();
        Assert.NotNull(accepted);
        Assert.Equal(kind, accepted.Kind);
        Assert.Equal(JobStatus.Queued, accepted.Status);
        Assert.Equal($"/api/jobs/{accepted.JobId}", response.Headers.Location?.OriginalString);

        await using (var db = fixture.CreateDbContext())
        {
            var row = await db.Jobs.AsNoTracking().SingleAsync();
            Assert.Equal(accepted.JobId, row.Id);
            Assert.Equal(kind, row.Kind);
            Assert.Equal(0, row.Attempts);
            // No worker runs in these tests, so nothing moves the job on.
            Assert.Equal(JobStatus.Queued, row.Status);
            Assert.Null(row.IdempotencyKey);
            Assert.Equal(64, row.RequestHash?.Length);
        }

        using var get = await _api.Client.GetAsync(response.Headers.Location);
        Assert.Equal(HttpStatusCode.OK, get.StatusCode);
        var details = await get.Content.ReadFromJsonAsync<JobDetails>();
        Assert.NotNull(details);
        Assert.Equal(accepted.JobId, details.JobId);
        Assert.Equal(kind, details.Kind);
        Assert.Equal(JobStatus.Queued, details.Status);
        Assert.True(details.CreatedAt > DateTimeOffset.UtcNow.AddMinutes(-5));
    }

    [Fact]
    public async Task Accepted_job_is_published_with_its_job_id()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var paymentId = Guid.NewGuid();

        using var response = await _api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var accepted = await response.Content.ReadFromJsonAsync<JobAccepted>();
        // Publisher confirms: the message is in the queue by the time the 202 arrives.
        var message = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
        Assert.NotNull(message);
        var jobIdHeader = Assert.IsType<byte[]>(message.BasicProperties.Headers?[JobHeaders.JobId]);
        Assert.Equal(accepted?.JobId.ToString(), Encoding.UTF8.GetString(jobIdHeader));
        using var envelope = JsonDocument.Parse(message.Body);
        Assert.Equal(paymentId, envelope.RootElement.GetProperty("message").GetProperty("paymentId").GetGuid());
    }

    [Fact]
    public async Task Unknown_job_id_is_a_404_problem()
    {
        using var response = await _api.Client.GetAsync(new Uri($"/api/jobs/{Guid.NewGuid()}", UriKind.Relative));

        await response.AssertProblemAsync(StatusCodes.Status404NotFound);
    }

    [Fact]
    public async Task Job_id_that_is_not_a_uuid_is_a_400_problem_naming_it()
    {
        using var response = await _api.Client.GetAsync(new Uri("/api/jobs/12345", UriKind.Relative));

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(["jobId"], await response.ReadErrorFieldsAsync());
    }
}
