using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Retention;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Observability;

[Collection(ConveyorCollection.Name)]
public sealed class RetentionTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task The_sweeper_deletes_only_what_is_past_its_window_in_small_batches()
    {
        var now = DateTimeOffset.UtcNow;
        var old = now.AddDays(-40);
        var recent = now.AddHours(-1);
        await using (var db = fixture.CreateDbContext())
        {
            db.Inbox.AddRange(
                Inbox("old-done-1", old, InboxStatus.Done),
                Inbox("old-done-2", old, InboxStatus.Done),
                Inbox("old-done-3", old, InboxStatus.Done),
                Inbox("recent-done", recent, InboxStatus.Done),
                Inbox("old-processing", old, InboxStatus.Processing));
            db.Jobs.AddRange(
                Job("old-succeeded", JobStatus.Succeeded, old),
                Job("old-dead", JobStatus.DeadLettered, old),
                Job("old-cancelled", JobStatus.Cancelled, old),
                Job("recent-succeeded", JobStatus.Succeeded, recent),
                // Created long ago, finished recently: its window runs from the finish.
                Job("long-running-succeeded", JobStatus.Succeeded, recent, createdAt: old),
                Job("old-retrying", JobStatus.RetryScheduled, old),
                Job("old-queued", JobStatus.Queued, old));
            await db.SaveChangesAsync();
        }

        var settings = WorkerSettings.With();
        settings["Retention:InboxHours"] = "168";
        settings["Retention:JobHours"] = "720";
        settings["Retention:BatchSize"] = "2";
        // The background sweep stays off; the test runs one sweep itself.
        settings["Retention:Enabled"] = "false";
        await using var worker = await fixture.StartWorkerAsync(settings);
        var sweeper = worker.Services.GetRequiredService<RetentionSweeper>();

        var swept = await sweeper.SweepAsync(now, CancellationToken.None);

        Assert.Equal(3, swept.InboxRows);
        Assert.Equal(3, swept.Jobs);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(["old-processing", "recent-done"], await check.Inbox.Select(i => i.MessageKey).OrderBy(k => k).ToListAsync());
        Assert.Equal(["long-running-succeeded", "old-queued", "old-retrying", "recent-succeeded"], await check.Jobs.Select(j => j.BusinessKey).OrderBy(k => k).ToListAsync());
        Assert.Equal(new SweepResult(0, 0, 0), await sweeper.SweepAsync(now, CancellationToken.None));
    }

    private static InboxRecord Inbox(string key, DateTimeOffset receivedAt, string status) => new()
    {
        ConsumerId = "charge-payment",
        MessageKey = key,
        ReceivedAt = receivedAt,
        Status = status,
        LeaseOwner = status == InboxStatus.Processing ? "someone" : null,
        LeaseExpiresAt = status == InboxStatus.Processing ? receivedAt.AddMinutes(1) : null,
    };

    private static Job Job(string key, string status, DateTimeOffset updatedAt, DateTimeOffset? createdAt = null) => new()
    {
        Id = Guid.NewGuid(),
        Kind = "charge-payment",
        BusinessKey = key,
        Status = status,
        CreatedAt = createdAt ?? updatedAt,
        UpdatedAt = updatedAt,
    };
}
