using Conveyor.Contracts;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Observability;

/// <summary>
/// <c>conveyor_jobs_retries_scheduled_total</c> counts the delayed redeliveries the worker stored. Two copies of one
/// command (a duplicate publish) failing at the same count fold into one stored row (<c>RedeliveryStore</c>): one
/// redelivery is scheduled, and it counted two.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class RetryMetricCountsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Two_copies_of_a_command_folded_into_one_stored_redelivery_count_one_retry_scheduled()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        using var retries = WorkerMetric.RetriesScheduled(JobKinds.DeliverWebhook);
        var logs = new CapturedLogs();
        await using var worker = await FoldedWebhookCopies.StartWorkerAsync(
            fixture, receiver, builder => builder.Logging.AddProvider(logs), ("Logging:LogLevel:Conveyor.Worker.Jobs", "Information"));
        retries.Watch(worker.Services);
        // The second copy fails at the same count as the first, and folds into the row stored first.
        var (webhookId, _) = await FoldedWebhookCopies.PublishTwiceAsync(
            fixture, receiver, betweenCopies: () => Eventually.AssertAsync(() => Assert.Equal(1, retries.Count)));
        // Each copy's handling logs its redelivery right after the count, scheduled or joined: both are in once both are logged.
        await Eventually.AssertAsync(() => Assert.Equal(2, logs.Entries.Count(e =>
            e.Message.Contains(webhookId.ToString(), StringComparison.Ordinal) && e.Message.Contains("failed transiently; ", StringComparison.Ordinal))));

        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        Assert.Equal(2, receiver.Deliveries.Count);
        Assert.Equal(1, retries.Count);
    }
}
