using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The single-message inbox (<see cref="Conveyor.Worker.Inbox.InboxFilter{T}"/>) claims the job in its
/// first statement. Two commands under different keys that claim the same unused job id, in two inbox
/// transactions at once, must both run: the second under an id of its own, not failed (for good: a
/// unique violation is permanent) for the first one's claim.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class InboxClaimedJobIdRaceTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private const string ConsumerId = "inbox-claimed-id-race-test";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Two_commands_claiming_the_same_unused_job_id_in_two_inbox_transactions_at_once_both_run()
    {
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System);
        var claimed = Guid.NewGuid();
        var (keyA, keyB) = (Guid.NewGuid().ToString(), Guid.NewGuid().ToString());

        await using var dbA = fixture.CreateDbContext();
        await using var transactionA = await dbA.Database.BeginTransactionAsync();
        var a = await tracker.ClaimInTransactionAsync(dbA, ConsumerId, keyA, Guid.NewGuid(), null, new JobRef(Kind, keyA, claimed), CancellationToken.None);
        Assert.Equal((InboxClaim.Run, claimed), (a.Claim, a.JobId));

        // b's claim begins while a's (its consumer running) has not committed: the id looks free to both.
        var b = Task.Run(async () =>
        {
            await using var dbB = fixture.CreateDbContext();
            await using var transactionB = await dbB.Database.BeginTransactionAsync();
            var claim = await tracker.ClaimInTransactionAsync(dbB, ConsumerId, keyB, Guid.NewGuid(), null, new JobRef(Kind, keyB, claimed), CancellationToken.None);
            await transactionB.CommitAsync();
            return claim;
        });
        await fixture.WaitForLockWaitersAsync(1);
        await transactionA.CommitAsync();

        var claimB = await b.WaitAsync(Patience);
        Assert.Equal(InboxClaim.Run, claimB.Claim);
        Assert.NotEqual(claimed, claimB.JobId);

        await using var db = fixture.CreateDbContext();
        var jobs = await db.Jobs.AsNoTracking().Where(j => j.BusinessKey == keyA || j.BusinessKey == keyB).ToDictionaryAsync(j => j.BusinessKey);
        Assert.Equal(2, jobs.Count);
        Assert.Equal(claimed, jobs[keyA].Id);
        Assert.Equal(claimB.JobId, jobs[keyB].Id);
        Assert.All(jobs.Values, j => Assert.Equal((JobStatus.Running, 1), (j.Status, j.Attempts)));
    }
}
