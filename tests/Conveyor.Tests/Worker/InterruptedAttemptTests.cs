using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;

namespace Conveyor.Tests.Worker;

/// <summary>What a delivery cut off by a shutdown writes into its job's row, against the real database.</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InterruptedAttemptTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_delivery_stopped_before_its_claim_leaves_the_job_another_worker_runs_as_it_is()
    {
        var key = Guid.NewGuid().ToString();
        var id = await InsertRunningJobAsync(key, attempts: 3);
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System, NullLogger<JobTracker>.Instance);

        // A copy stopped while waiting for its claim: no attempt of its own to mark.
        await tracker.MarkInterruptedAsync(new JobRef(Kind, key, id, Attempt: null), CancellationToken.None);

        await using (var db = fixture.CreateDbContext())
        {
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == id);
            Assert.Equal((JobStatus.Running, 3, (string?)null), (job.Status, job.Attempts, job.LastError));
        }

        // The attempt that is the job's latest is marked.
        await tracker.MarkInterruptedAsync(new JobRef(Kind, key, id, Attempt: 3), CancellationToken.None);
        await using var check = fixture.CreateDbContext();
        var interrupted = await check.Jobs.AsNoTracking().SingleAsync(j => j.Id == id);
        Assert.Equal(JobStatus.Queued, interrupted.Status);
        Assert.Contains("shutdown", interrupted.LastError, StringComparison.Ordinal);
    }

    private async Task<Guid> InsertRunningJobAsync(string key, int attempts)
    {
        await using var db = fixture.CreateDbContext();
        var now = DateTimeOffset.UtcNow;
        var job = new Job
        {
            Id = Guid.CreateVersion7(), Kind = Kind, BusinessKey = key, Status = JobStatus.Running,
            Attempts = attempts, CreatedAt = now, UpdatedAt = now,
        };
        db.Jobs.Add(job);
        await db.SaveChangesAsync();
        return job.Id;
    }
}
