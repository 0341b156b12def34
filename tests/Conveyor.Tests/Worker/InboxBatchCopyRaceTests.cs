using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// Two copies of a command another service published directly (no job row yet) in two batches at once
/// (<see cref="InboxBatcher"/>), driven directly against the real database: the second batch's claim waits
/// for the first's inbox row, and the first creates the job row as its attempt fails. The second claim must
/// see that row when it goes on: its lock, its id, the attempt it counts and the command it was created for.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxBatchCopyRaceTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
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
    public async Task A_copy_whose_claim_waited_for_a_failed_first_attempt_counts_the_next_attempt_of_the_job_row_it_created()
    {
        var key = Guid.NewGuid().ToString();
        byte[] command = [.. Enumerable.Repeat((byte)0x0C, 16)];
        var (first, second) = await ClaimWhileTheFirstCopyFailsAsync(key, command, command);

        Assert.Equal(InboxClaim.Run, await second.Claimed.WaitAsync(Patience));
        await using (var db = fixture.CreateDbContext())
        {
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Kind == Kind && j.BusinessKey == key);
            Assert.Equal((job.Id, 2), (second.JobId!.Value, second.Attempt!.Value));
        }

        second.RanAndFailed();
        Assert.True(await second.Completed.WaitAsync(Patience));
        await using var after = fixture.CreateDbContext();
        // The failure path writes the status of the attempt the claim counted: it must be the row's.
        Assert.Equal(second.Attempt, (await after.Jobs.AsNoTracking().SingleAsync(j => j.Kind == Kind && j.BusinessKey == key)).Attempts);
        Assert.Equal(first.JobId, second.JobId);
    }

    [Fact]
    public async Task A_copy_with_other_content_whose_claim_waited_for_a_failed_first_attempt_is_the_conflict_with_the_job_it_created()
    {
        // ADR 0011: the job row is the first command's now; a command of other content under its key is the conflict.
        var key = Guid.NewGuid().ToString();
        byte[] ours = [.. Enumerable.Repeat((byte)0x0D, 16)];
        byte[] theirs = [.. Enumerable.Repeat((byte)0x0E, 16)];
        var (_, second) = await ClaimWhileTheFirstCopyFailsAsync(key, ours, theirs);

        Assert.Equal(InboxClaim.Duplicate, await second.Claimed.WaitAsync(Patience));
        Assert.Equal(ours, second.ConflictingFingerprint);
        await using var db = fixture.CreateDbContext();
        Assert.False(await db.Inbox.AnyAsync(i => i.MessageKey == key), "the conflicting copy's inbox row stayed");
        Assert.Equal(1, (await db.Jobs.AsNoTracking().SingleAsync(j => j.Kind == Kind && j.BusinessKey == key)).Attempts);
    }

    /// <summary>
    /// The first copy runs in a batch of its own; the second joins the next batch, whose claim waits for the
    /// first's uncommitted inbox row; then the first's consumer fails, and its batch creates the job row
    /// (running, one attempt) and removes its inbox row as it commits.
    /// </summary>
    private async Task<(BatchMember First, BatchMember Second)> ClaimWhileTheFirstCopyFailsAsync(string key, byte[] firstCommand, byte[] secondCommand)
    {
        _batcher = DrivenBatcher.Start(fixture, "inbox-copy-race-test");
        var first = Join(key, firstCommand);
        Assert.Equal(InboxClaim.Run, await first.Claimed.WaitAsync(Patience));

        var second = Join(key, secondCommand);
        await fixture.WaitForLockWaitersAsync(1);
        Assert.False(second.Claimed.IsCompleted);

        first.RanAndFailed();
        Assert.True(await first.Completed.WaitAsync(Patience));
        return (first, second);
    }

    private BatchMember Join(string key, byte[] fingerprint) => _batcher!.Join(key, claimedJobId: null, fingerprint);
}
