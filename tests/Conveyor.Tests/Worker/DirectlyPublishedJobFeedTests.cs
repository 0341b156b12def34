using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Worker;

/// <summary>
/// ADR 0013: a client polling <c>GET /api/jobs?order=oldest</c> with its cursor gets every job once, also one
/// whose row a worker created for a command published straight to RabbitMQ. Such a row was stamped with the
/// worker's clock, and a worker whose clock was behind the database's put it behind the horizon from the start:
/// the client never got the job.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class DirectlyPublishedJobFeedTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The shortest horizon the Api takes, so that the feed moves past a job's place within seconds.</summary>
    private const string ListingSettleSeconds = "3";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

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
