using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary>
/// A webhook's payload nested as deep as the Api allows reaches the receiver, now or scheduled; one
/// level more is a 400 naming the payload, not a job the broker can never be given (a 503) or a 500.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class PayloadDepthTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The Api's limit: a payload nested this deep is accepted.</summary>
    private const int Limit = 32;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_payload_nested_to_the_limit_is_delivered_whole_now_and_when_scheduled()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Webhooks:AllowPrivateNetworks"] = "true" });
        var payload = Nested(Limit);

        var now = await api.Client.AcceptJobAsync(JobKinds.DeliverWebhook, Webhook(Guid.NewGuid(), payload, receiver.Url("/now")));
        // Due in an hour, then made due: due two seconds on, a request that took that long to arrive (a busy
        // machine) would carry a past runAt and be refused.
        var scheduled = await api.Client.AcceptJobAsync(JobKinds.DeliverWebhook,
            Webhook(Guid.NewGuid(), payload, receiver.Url("/later"), runAt: DateTimeOffset.UtcNow.AddHours(1)));

        Assert.Equal((JobStatus.Queued, JobStatus.Scheduled), (now.Status, scheduled.Status));
        await fixture.MakeScheduledMessagesDueAsync();
        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(JobStatus.Succeeded, (await api.Client.GetJobAsync(now.JobId)).Status);
            Assert.Equal(JobStatus.Succeeded, (await api.Client.GetJobAsync(scheduled.JobId)).Status);
        });
        using var sent = JsonDocument.Parse(payload);
        foreach (var path in new[] { "/now", "/later" })
        {
            var delivery = Assert.Single(receiver.Deliveries, d => d.Path == path);
            using var received = JsonDocument.Parse(delivery.Body);
            Assert.True(JsonElement.DeepEquals(sent.RootElement, received.RootElement), Encoding.UTF8.GetString(delivery.Body));
        }
    }

    /// <summary>One level over the limit; and the deepest a body the parser reads can hold, which could not be published.</summary>
    [Theory]
    [InlineData(Limit + 1, false)]
    [InlineData(Limit + 1, true)]
    [InlineData(63, false)]
    [InlineData(63, true)]
    public async Task A_payload_nested_deeper_is_a_400_naming_it_and_leaves_no_job(int depth, bool scheduled)
    {
        await using var api = await fixture.StartApiAsync();
        var runAt = scheduled ? DateTimeOffset.UtcNow.AddHours(1) : (DateTimeOffset?)null;

        using var response = await api.Client.PostJobAsync(
            JobKinds.DeliverWebhook, Webhook(Guid.NewGuid(), Nested(depth), new Uri("https://hooks.example.com/orders"), runAt));

        Assert.True(response.StatusCode == HttpStatusCode.BadRequest, $"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        Assert.Equal(["payload"], await response.ReadErrorFieldsAsync());
        await AssertNoJobsAsync();
    }

    [Fact]
    public async Task In_a_batch_a_payload_nested_deeper_is_a_400_naming_its_job_and_one_to_the_limit_is_accepted()
    {
        await using var api = await fixture.StartApiAsync();
        var url = new Uri("https://hooks.example.com/orders");
        var runAt = DateTimeOffset.UtcNow.AddHours(1);

        using (var refused = await JobBatchTests.PostBatchAsync(api, JobKinds.DeliverWebhook, JobBatchTests.Batch(
        [
            Webhook(Guid.NewGuid(), Nested(Limit), url),
            Webhook(Guid.NewGuid(), Nested(Limit + 1), url),
            Webhook(Guid.NewGuid(), Nested(Limit + 1), url, runAt),
        ])))
        {
            Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
            Assert.Equal(["jobs[1].payload", "jobs[2].payload"], await refused.ReadErrorFieldsAsync());
        }

        await AssertNoJobsAsync();

        using var accepted = await JobBatchTests.PostBatchAsync(api, JobKinds.DeliverWebhook, JobBatchTests.Batch(
        [
            Webhook(Guid.NewGuid(), Nested(Limit), url),
            Webhook(Guid.NewGuid(), Nested(Limit), url, runAt),
        ]));
        Assert.True(accepted.StatusCode == HttpStatusCode.Accepted, $"{(int)accepted.StatusCode}: {await accepted.Content.ReadAsStringAsync()}");
        var answer = await accepted.Content.ReadFromJsonAsync<JobBatchAccepted>();
        Assert.Equal([JobStatus.Queued, JobStatus.Scheduled], answer!.Jobs.Select(j => j.Status));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(2, await db.Jobs.CountAsync());
        Assert.Equal(1, await db.ScheduledMessages.CountAsync());
    }

    /// <summary>A JSON value of <paramref name="depth"/> nested objects and arrays, taking turns.</summary>
    private static string Nested(int depth)
    {
        var json = new StringBuilder();
        for (var level = 0; level < depth; level++)
        {
            json.Append(level % 2 == 0 ? """{"level":""" : "[");
        }

        json.Append("true");
        for (var level = depth - 1; level >= 0; level--)
        {
            json.Append(level % 2 == 0 ? '}' : ']');
        }

        return json.ToString();
    }

    private static string Webhook(Guid webhookId, string payload, Uri url, DateTimeOffset? runAt = null) =>
        $$"""{"webhookId":"{{webhookId}}","url":"{{url}}","eventType":"order.paid","payload":{{payload}}{{(runAt is { } at ? $",\"runAt\":\"{at:O}\"" : "")}}}""";

    private async Task AssertNoJobsAsync()
    {
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }
}
