using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A job id header is only a claim (<see cref="JobRef"/>): two commands under different keys that claim
/// the same unused id, in two inbox batches at once (<see cref="InboxBatcher"/>), must both commit, the
/// second under an id of its own; neither may fail (for good: a unique violation is permanent) for the other's claim.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class InboxBatchClaimedJobIdTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private DrivenBatcher? _batcher;

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        if (_batcher is not null)
        {
            await _batcher.DisposeAsync();
        }
    }

    [Fact]
    public async Task Two_commands_claiming_the_same_unused_job_id_in_two_batches_at_once_both_commit()
    {
        _batcher = DrivenBatcher.Start(fixture, "inbox-claimed-id-test");
        var claimed = Guid.NewGuid();
        var a = Join(Guid.NewGuid().ToString(), claimed);
        Assert.Equal(InboxClaim.Run, await a.Claimed.WaitAsync(Patience));
        var b = Join(Guid.NewGuid().ToString(), claimed);
        Assert.Equal(InboxClaim.Run, await b.Claimed.WaitAsync(Patience));

        a.RanSuccessfully([]);
        Assert.True(await a.Completed.WaitAsync(Patience), $"failed: {a.BatchFailure}");
        b.RanSuccessfully([]);
        Assert.True(await b.Completed.WaitAsync(Patience), $"failed: {b.BatchFailure}");

        await using var db = fixture.CreateDbContext();
        var jobs = await db.Jobs.AsNoTracking().Where(j => j.BusinessKey == a.MessageKey || j.BusinessKey == b.MessageKey).ToListAsync();
        Assert.Equal(2, jobs.Count(j => j.Status == JobStatus.Succeeded));
        Assert.Equal(claimed, jobs.Single(j => j.BusinessKey == a.MessageKey).Id);
    }

    private BatchMember Join(string key, Guid claimedJobId) => _batcher!.Join(key, claimedJobId, fingerprint: null);
}
