using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A job id header is only a claim (<see cref="JobRef"/>): two commands under different keys that claim
/// the same unused id, in two inbox batches at once (<see cref="InboxBatcher"/>), must both commit, the
/// second under an id of its own; neither may fail (for good: a unique violation is permanent) for the other's claim.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class InboxBatchClaimedJobIdTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private readonly List<BatchMember> _joined = [];
    private InboxBatcher? _batcher;

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        foreach (var member in _joined.Where(m => !m.Completed.IsCompleted))
        {
            member.RanAndFailed();
        }

        if (_batcher is not null)
        {
            await _batcher.DisposeAsync();
        }
    }

    [Fact]
    public async Task Two_commands_claiming_the_same_unused_job_id_in_two_batches_at_once_both_commit()
    {
        _batcher = new("inbox-claimed-id-test", Kind, maxBatch: 64, maxConcurrentBatches: 4, eagerBatches: 1, fixture.DbContextFactory(),
            TimeProvider.System, NullLogger.Instance, Timeout.InfiniteTimeSpan);
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

    private BatchMember Join(string key, Guid claimedJobId)
    {
        var member = _batcher!.Join(key, Guid.NewGuid(), claimedJobId, fingerprint: null);
        _joined.Add(member);
        return member;
    }
}
