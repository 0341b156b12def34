using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Worker;

/// <summary>
/// ADR 0013: a client polling <c>GET /api/jobs?order=oldest</c> with its cursor gets every job once, also one
/// whose row a worker created for a command published straight to RabbitMQ. Such a row was inserted with the
/// worker's clock in the transaction that then ran the consumer, so it committed only when the consumer ended,
/// behind a cursor that had passed its place meanwhile; and a worker whose clock was behind the database's put
/// it behind the horizon from the start. Either way the client never got the job.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class DirectlyPublishedJobFeedTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The shortest horizon the Api takes, so that the feed moves past a job's place within seconds.</summary>
    private const string ListingSettleSeconds = "3";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// With and without a job id claimed (<c>Conveyor-Job-Id</c>): the single-message inbox creates the row before its
    /// transaction for a command that names no job, and rolls its claim back to create it first for one that does.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_directly_published_job_whose_consumer_runs_long_reaches_a_client_polling_the_oldest_first_feed(bool claimsJobId)
    {
        var answer = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.HoldDeliveries = answer.Task;
        // Webhooks take one inbox transaction each (the single-message inbox); this one waits for its receiver.
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(("Webhooks:TimeoutSeconds", "60")));
        await using var api = await fixture.StartApiAsync(ApiSettings());
        await using var publisher = await TestPublisher.StartAsync(fixture);
        try
        {
            var (webhookId, claimedJobId) = (Guid.NewGuid(), Guid.NewGuid());
            await publisher.PublishAsync(
                new DeliverWebhook
                {
                    WebhookId = webhookId,
                    Url = receiver.Url(),
                    EventType = "order.paid",
                    Payload = JsonDocument.Parse("""{"orderId":42}""").RootElement,
                },
                headers: claimsJobId ? new Dictionary<string, string> { [JobHeaders.JobId] = claimedJobId.ToString() } : null);
            // Its consumer is running: the worker has seen the command and claimed its job.
            await Eventually.AssertAsync(() => Assert.Single(receiver.Deliveries));

            // A job created after that, whose row commits at once.
            var later = (await api.Client.AcceptJobAsync(
                JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)))).JobId;
            var client = new JobFeedClient(api.Client, "order=oldest");
            await Eventually.AssertAsync(async () =>
            {
                await client.PollToTheEndAsync();
                Assert.Contains(later, client.Seen);
            });

            // The consumer ends and its job commits; polling on with its cursor, the client gets it, in its place.
            answer.SetResult();
            var webhook = await fixture.WaitForJobAsync(webhookId.ToString(), JobStatus.Succeeded);
            await Eventually.AssertAsync(
                async () =>
                {
                    await client.PollToTheEndAsync();
                    Assert.Contains(webhook.Id, client.Seen);
                },
                timeout: TimeSpan.FromSeconds(30));
            Assert.Equal([webhook.Id, later], client.Seen);
            if (claimsJobId)
            {
                Assert.Equal(claimedJobId, webhook.Id);
            }

            Assert.Equal(1, webhook.Attempts);
        }
        finally
        {
            answer.TrySetResult();
        }
    }

    /// <summary>Each inbox that creates job rows: the group commit's, the single-message one's and the lease inbox of long jobs.</summary>
    [Theory]
    [InlineData("batched")]
    [InlineData("single")]
    [InlineData("lease")]
    public async Task A_directly_published_job_run_by_a_worker_whose_clock_is_behind_the_databases_reaches_a_client_polling_the_feed(string inbox)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        var settings = WorkerSettings.With(gateway)
            .Override(("Consumers:ChargePayment:InboxBatchSize", inbox == "single" ? "1" : "64"));
        // Two minutes behind: its rows were stamped far behind the horizon the feed had passed.
        await using var worker = await fixture.StartWorkerAsync(
            settings, builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromMinutes(-2))));
        await using var api = await fixture.StartApiAsync(ApiSettings());
        await using var publisher = await TestPublisher.StartAsync(fixture);

        // The client has read to the end: its cursor is at the horizon, the database's clock less 3 s.
        var client = new JobFeedClient(api.Client, "order=oldest");
        await client.PollToTheEndAsync();
        Assert.Empty(client.Seen);

        var key = Guid.NewGuid();
        if (inbox == "lease")
        {
            await publisher.PublishAsync(new GenerateReport { ReportId = key });
        }
        else
        {
            await publisher.PublishAsync(new ChargePayment { PaymentId = key, AccountId = "acct-feed", AmountMinor = 1250, Currency = "EUR" });
        }

        var job = await fixture.WaitForJobAsync(key.ToString(), JobStatus.Succeeded);
        await Eventually.AssertAsync(
            async () =>
            {
                await client.PollToTheEndAsync();
                Assert.Contains(job.Id, client.Seen);
            },
            timeout: TimeSpan.FromSeconds(30));
        Assert.Equal([job.Id], client.Seen);
    }

    private static Dictionary<string, string?> ApiSettings() => new()
    {
        ["Jobs:ListingSettleSeconds"] = ListingSettleSeconds,
        ["RateLimiting:Enabled"] = "false",
    };
}
