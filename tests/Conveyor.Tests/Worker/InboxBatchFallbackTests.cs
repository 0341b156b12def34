using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// An inbox batch that one message breaks must not fail the others (<see cref="InboxBatcher"/>),
/// driven directly against the real database. The culprit is a failed attempt whose job row cannot
/// be written: another job took its id between the batch's claim and its commit.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class InboxBatchFallbackTests(ConveyorFixture fixture) : IAsyncLifetime
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
    public async Task A_message_that_succeeded_commits_when_a_failed_attempt_in_its_batch_breaks_the_batch()
    {
        var (culprit, good) = (Key(), Key());
        var payment = Guid.NewGuid();
        var members = await JoinOneBatchAsync(culprit, good);

        await TakeJobIdAsync(members[0]);
        members[0].RanAndFailed();
        members[1].RanSuccessfully([Ledger(payment)]);

        Assert.False(await members[0].Completed.WaitAsync(Patience));
        Assert.True(await members[1].Completed.WaitAsync(Patience), $"the good message failed with the batch: {members[1].BatchFailure}");
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == payment));
        Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.Kind == Kind && j.BusinessKey == good)).Status);
        // The failed attempt's inbox row is not kept: its retry must run it.
        Assert.False(await db.Inbox.AnyAsync(i => i.MessageKey == culprit));
    }

    [Fact]
    public async Task Messages_that_only_waited_for_the_batch_are_settled_when_another_message_breaks_it()
    {
        var (culprit, finished, twice) = (Key(), Key(), Key());
        await InsertJobAsync(finished, JobStatus.Succeeded);
        var members = await JoinOneBatchAsync(culprit, finished, twice, twice);
        Assert.Equal(InboxClaim.NotRunnable, await members[1].Claimed);
        Assert.Equal(InboxClaim.DuplicateInBatch, await members[3].Claimed);

        await TakeJobIdAsync(members[0]);
        members[0].RanAndFailed();
        members[2].RanSuccessfully([]);

        Assert.False(await members[0].Completed.WaitAsync(Patience));
        // A finished job's copy is recorded as handled; the copy that waited for its twin acks with it.
        Assert.True(await members[1].Completed.WaitAsync(Patience), $"the finished job's copy failed with the batch: {members[1].BatchFailure}");
        Assert.True(await members[2].Completed.WaitAsync(Patience), $"the first copy failed with the batch: {members[2].BatchFailure}");
        Assert.True(await members[3].Completed.WaitAsync(Patience), $"the second copy failed with the batch: {members[3].BatchFailure}");
        await using var db = fixture.CreateDbContext();
        Assert.True(await db.Inbox.AnyAsync(i => i.MessageKey == finished));
        Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.Kind == Kind && j.BusinessKey == twice)).Status);
    }

    private static string Key() => Guid.NewGuid().ToString();

    private static LedgerEntry Ledger(Guid paymentId) => new()
    {
        PaymentId = paymentId,
        AccountId = "acct-fallback",
        AmountMinor = 500,
        Currency = "EUR",
        GatewayChargeId = $"ch_{paymentId:N}",
        ChargedAt = DateTimeOffset.UtcNow,
    };

    /// <summary>
    /// Members for <paramref name="keys"/>, all claimed in one batch: a first batch waits in its claim
    /// for a job-row lock the test holds while they join, and they start together once it is released.
    /// </summary>
    private async Task<IReadOnlyList<BatchMember>> JoinOneBatchAsync(params string[] keys)
    {
        _batcher = new("inbox-fallback-test", Kind, maxBatch: 64, maxConcurrentBatches: 4, eagerBatches: 1, fixture.DbContextFactory(),
            TimeProvider.System, NullLogger.Instance, Timeout.InfiniteTimeSpan);
        var blockedKey = Key();
        await InsertJobAsync(blockedKey, JobStatus.Queued);
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var hold = await connection.BeginTransactionAsync();
        await using (var lockRow = new NpgsqlCommand("SELECT 1 FROM jobs WHERE business_key = @key FOR UPDATE", connection, hold))
        {
            lockRow.Parameters.AddWithValue("key", blockedKey);
            await lockRow.ExecuteScalarAsync();
        }

        var blocked = Join(blockedKey);
        await Eventually.AssertAsync(async () =>
        {
            await using var watcher = new NpgsqlConnection(fixture.ConnectionString);
            await watcher.OpenAsync();
            await using var waiting = new NpgsqlCommand(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", watcher);
            Assert.Equal(1L, (long)(await waiting.ExecuteScalarAsync() ?? 0L));
        });
        var members = keys.Select(Join).ToList();
        Assert.DoesNotContain(members, m => m.Claimed.IsCompleted);
        await hold.CommitAsync();

        Assert.Equal(InboxClaim.Run, await blocked.Claimed.WaitAsync(Patience));
        blocked.RanSuccessfully([]);
        Assert.True(await blocked.Completed.WaitAsync(Patience));
        foreach (var member in members)
        {
            await member.Claimed.WaitAsync(Patience);
        }

        return members;
    }

    private BatchMember Join(string key)
    {
        var member = _batcher!.Join(key, Guid.NewGuid(), Guid.NewGuid(), fingerprint: null);
        _joined.Add(member);
        return member;
    }

    /// <summary>Another job's row takes the id the member's job row is about to be created with.</summary>
    private async Task TakeJobIdAsync(BatchMember member)
    {
        Guid? id = member.JobId;
        Assert.True(id.HasValue, "the claim gave the job an id");
        await InsertJobAsync(Key(), JobStatus.Succeeded, id, kind: "generate-report");
    }

    private async Task InsertJobAsync(string key, string status, Guid? id = null, string kind = Kind)
    {
        var now = DateTimeOffset.UtcNow;
        await using var db = fixture.CreateDbContext();
        db.Jobs.Add(new Job { Id = id ?? Guid.NewGuid(), Kind = kind, BusinessKey = key, Status = status, CreatedAt = now, UpdatedAt = now });
        await db.SaveChangesAsync();
    }
}
