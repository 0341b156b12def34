using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A job id header is only a claim (<see cref="JobRef"/>): two commands under different keys that claim
/// the same unused id, in two inbox batches at once (<see cref="InboxBatcher"/>), must both commit, the
/// second under an id of its own; neither may fail (for good: a unique violation is permanent) for the other's claim.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxBatchClaimedJobIdTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private const string HeldApply = "inbox_claimed_id_held_apply";
    private const string BrokenApply = "inbox_claimed_id_broken_apply";
    private const long ApplyLock = 4242;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private DrivenBatcher? _batcher;
    private readonly List<TestTrigger> _triggers = [];

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        if (_batcher is not null)
        {
            await _batcher.DisposeAsync();
        }

        foreach (var trigger in _triggers)
        {
            await trigger.DisposeAsync();
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

    [Fact]
    public async Task Two_commands_claiming_the_same_unused_job_id_whose_batches_apply_at_the_same_instant_both_commit_once()
    {
        _batcher = DrivenBatcher.Start(fixture, "inbox-claimed-id-overlap-test");
        var claimed = Guid.NewGuid();
        var (paymentA, paymentB) = (Guid.NewGuid(), Guid.NewGuid());
        var a = Join(Guid.NewGuid().ToString(), claimed);
        Assert.Equal(InboxClaim.Run, await a.Claimed.WaitAsync(Patience));
        var b = Join(Guid.NewGuid().ToString(), claimed);
        Assert.Equal(InboxClaim.Run, await b.Claimed.WaitAsync(Patience));

        await using var applyLock = await HoldApplyAsync(a);
        a.RanSuccessfully([Ledger(paymentA)]);
        await fixture.WaitForLockWaitersAsync(1);
        // b's apply, begun while a's row is written but not committed, finds the claimed id free as well.
        b.RanSuccessfully([Ledger(paymentB)]);
        await fixture.WaitForLockWaitersAsync(2);
        await ReleaseApplyAsync(applyLock);

        Assert.True(await a.Completed.WaitAsync(Patience), $"failed: {a.BatchFailure}");
        Assert.True(await b.Completed.WaitAsync(Patience), $"failed: {b.BatchFailure}");
        await AssertBothCommittedOnceAsync(claimed, (a, paymentA), (b, paymentB));
    }

    [Fact]
    public async Task A_command_settled_alone_after_its_batch_broke_commits_under_a_fresh_id_when_another_batch_writes_its_claimed_id_at_that_instant()
    {
        _batcher = DrivenBatcher.Start(fixture, "inbox-claimed-id-settle-test");
        var claimed = Guid.NewGuid();
        var (paymentA, paymentB) = (Guid.NewGuid(), Guid.NewGuid());
        var a = Join(Guid.NewGuid().ToString(), claimed);
        Assert.Equal(InboxClaim.Run, await a.Claimed.WaitAsync(Patience));
        // b's batch: a culprit whose job row (written first, its key sorts first) breaks the batch's apply
        // once, and b, claiming the same id as a; b is then applied alone while a's row is not committed yet.
        var (culprit, b) = await JoinOneBatchAsync("0-" + Guid.NewGuid(), "1-" + Guid.NewGuid(), claimed);
        _triggers.Add(await TestTrigger.CreateAsync(fixture, BrokenApply, "jobs", $"""
            CREATE SEQUENCE {BrokenApply};
            CREATE FUNCTION {BrokenApply}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF nextval('{BrokenApply}') = 1 THEN
                    RAISE EXCEPTION 'the job row of % cannot be written this once', NEW.business_key USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER {BrokenApply} BEFORE INSERT ON jobs FOR EACH ROW WHEN (NEW.business_key = '{culprit.MessageKey}') EXECUTE FUNCTION {BrokenApply}();
            """));

        await using var applyLock = await HoldApplyAsync(a);
        a.RanSuccessfully([Ledger(paymentA)]);
        await fixture.WaitForLockWaitersAsync(1);
        culprit.RanAndFailed();
        b.RanSuccessfully([Ledger(paymentB)]);
        await fixture.WaitForLockWaitersAsync(2);
        await ReleaseApplyAsync(applyLock);

        Assert.True(await a.Completed.WaitAsync(Patience), $"failed: {a.BatchFailure}");
        Assert.True(await b.Completed.WaitAsync(Patience), $"failed: {b.BatchFailure}");
        await AssertBothCommittedOnceAsync(claimed, (a, paymentA), (b, paymentB));
    }

    /// <summary>
    /// a's apply, once it has written its job row, waits with its transaction open for a lock the test
    /// holds on the returned connection, until <see cref="ReleaseApplyAsync"/>.
    /// </summary>
    private async Task<NpgsqlConnection> HoldApplyAsync(BatchMember a)
    {
        var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using (var take = new NpgsqlCommand($"SELECT pg_advisory_lock({ApplyLock})", connection))
        {
            await take.ExecuteScalarAsync();
        }

        _triggers.Add(await TestTrigger.CreateAsync(fixture, HeldApply, "jobs", $"""
            CREATE FUNCTION {HeldApply}() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock({ApplyLock});
                RETURN NULL;
            END $$;
            CREATE TRIGGER {HeldApply} AFTER INSERT ON jobs FOR EACH ROW WHEN (NEW.business_key = '{a.MessageKey}') EXECUTE FUNCTION {HeldApply}();
            """));
        return connection;
    }

    private static async Task ReleaseApplyAsync(NpgsqlConnection connection)
    {
        await using var release = new NpgsqlCommand($"SELECT pg_advisory_unlock({ApplyLock})", connection);
        await release.ExecuteScalarAsync();
    }

    /// <summary>Both jobs succeeded once, each with its effect once: the first under the claimed id, the other under one of its own.</summary>
    private async Task AssertBothCommittedOnceAsync(Guid claimed, (BatchMember Member, Guid Payment) first, (BatchMember Member, Guid Payment) second)
    {
        await using var db = fixture.CreateDbContext();
        var jobs = await db.Jobs.AsNoTracking().Where(j => j.BusinessKey == first.Member.MessageKey || j.BusinessKey == second.Member.MessageKey).ToListAsync();
        Assert.Equal(2, jobs.Count);
        Assert.All(jobs, j => Assert.Equal((JobStatus.Succeeded, 1), (j.Status, j.Attempts)));
        Assert.Equal(claimed, jobs.Single(j => j.BusinessKey == first.Member.MessageKey).Id);
        Assert.NotEqual(claimed, jobs.Single(j => j.BusinessKey == second.Member.MessageKey).Id);
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == first.Payment));
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == second.Payment));
    }

    /// <summary>
    /// <paramref name="culpritKey"/> and <paramref name="key"/> (claiming <paramref name="claimedJobId"/>) claimed
    /// in one batch: a batch before them waits in its claim for a job-row lock the test holds while they join.
    /// </summary>
    private async Task<(BatchMember Culprit, BatchMember Member)> JoinOneBatchAsync(string culpritKey, string key, Guid claimedJobId)
    {
        var blockedKey = Guid.NewGuid().ToString();
        await using (var db = fixture.CreateDbContext())
        {
            var now = DateTimeOffset.UtcNow;
            db.Jobs.Add(new Job { Id = Guid.NewGuid(), Kind = Kind, BusinessKey = blockedKey, Status = JobStatus.Queued, CreatedAt = now, UpdatedAt = now });
            await db.SaveChangesAsync();
        }

        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var hold = await connection.BeginTransactionAsync();
        await using (var lockRow = new NpgsqlCommand("SELECT 1 FROM jobs WHERE business_key = @key FOR UPDATE", connection, hold))
        {
            lockRow.Parameters.AddWithValue("key", blockedKey);
            await lockRow.ExecuteScalarAsync();
        }

        var blocked = _batcher!.Join(blockedKey, claimedJobId: null, fingerprint: null);
        await fixture.WaitForLockWaitersAsync(1);
        var culprit = _batcher.Join(culpritKey, claimedJobId: null, fingerprint: null);
        var member = Join(key, claimedJobId);
        await hold.CommitAsync();

        Assert.Equal(InboxClaim.Run, await blocked.Claimed.WaitAsync(Patience));
        blocked.RanSuccessfully([]);
        Assert.True(await blocked.Completed.WaitAsync(Patience));
        Assert.Equal(InboxClaim.Run, await culprit.Claimed.WaitAsync(Patience));
        Assert.Equal(InboxClaim.Run, await member.Claimed.WaitAsync(Patience));
        return (culprit, member);
    }

    private static LedgerEntry Ledger(Guid paymentId) => new()
    {
        PaymentId = paymentId,
        AccountId = "acct-claimed-id",
        AmountMinor = 500,
        Currency = "EUR",
        GatewayChargeId = $"ch_{paymentId:N}",
        ChargedAt = DateTimeOffset.UtcNow,
    };

    private BatchMember Join(string key, Guid claimedJobId) => _batcher!.Join(key, claimedJobId, fingerprint: null);
}
