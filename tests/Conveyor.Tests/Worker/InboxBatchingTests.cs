using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// How the inbox's group commit forms batches (<see cref="InboxBatcher"/>), driven directly against
/// the real database. A batch is held in the database by a row lock the test takes on its job row,
/// so which messages share a transaction does not depend on timing.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxBatchingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private readonly List<BatchMember> _joined = [];
    private InboxBatcher? _batcher;

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        // After a failed assertion, consumers that never ran would keep their batches' transactions
        // open (and the next test's reset waiting): they fail now, so the batches end.
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
    public async Task Messages_arriving_while_a_batch_is_in_the_database_share_the_next_transaction()
    {
        var (batcher, hold, first) = await BlockFirstBatchAsync(maxBatch: 64);
        await using var releaseAtEnd = hold;

        // One by one, with pauses: each could have started a batch of its own.
        var later = new List<BatchMember>();
        for (var i = 0; i < 10; i++)
        {
            later.Add(Join(batcher, NewKey()));
            await Task.Delay(TimeSpan.FromMilliseconds(20));
        }

        Assert.DoesNotContain(later, m => m.Claimed.IsCompleted);
        await hold.ReleaseAsync();

        await RunAllAsync([first, .. later]);
        Assert.Equal(1, await TransactionsThatInsertedAsync(later));
        Assert.Equal(2, await TransactionsThatInsertedAsync([first, .. later]));
    }

    [Fact]
    public async Task A_full_batch_starts_while_another_batch_is_still_in_the_database()
    {
        var (batcher, hold, first) = await BlockFirstBatchAsync(maxBatch: 8);
        await using var releaseAtEnd = hold;

        var full = Enumerable.Range(0, 8).Select(_ => Join(batcher, NewKey())).ToList();
        await RunAllAsync(full);

        Assert.False(first.Claimed.IsCompleted, "the first batch is still waiting for the row lock");
        Assert.Equal(1, await TransactionsThatInsertedAsync(full));
        await hold.ReleaseAsync();
        await RunAllAsync([first]);
    }

    [Fact]
    public async Task A_batch_stuck_waiting_for_a_row_lock_holds_the_next_messages_back_only_for_the_gather_limit()
    {
        var (batcher, hold, first) = await BlockFirstBatchAsync(maxBatch: 64, gatherLimit: TimeSpan.FromMilliseconds(50));
        await using var releaseAtEnd = hold;

        var next = Join(batcher, NewKey());
        await RunAllAsync([next]);

        Assert.False(first.Claimed.IsCompleted, "the first batch is still waiting for the row lock");
        await hold.ReleaseAsync();
        await RunAllAsync([first]);
    }

    [Fact]
    public async Task A_slow_consumer_does_not_hold_back_a_message_that_arrives_after_it()
    {
        var batcher = NewBatcher(maxBatch: 64, concurrentBatches: 4);
        var slow = Join(batcher, NewKey());
        Assert.Equal(InboxClaim.Run, await slow.Claimed.WaitAsync(Patience));

        // The slow consumer is still running (its batch waits for it outside the database): the
        // next message gets a batch of its own and commits first.
        var quick = Join(batcher, NewKey());
        await RunAllAsync([quick]);
        Assert.False(slow.Completed.IsCompleted);

        slow.RanSuccessfully([]);
        Assert.True(await slow.Completed.WaitAsync(Patience));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(2, await db.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
    }

    [Fact]
    public async Task A_message_under_a_key_taken_with_other_content_is_told_apart_from_a_true_copy_in_its_batch_and_after_it()
    {
        // ADR 0011. The three messages under one key share a batch: the first runs, the true copy waits
        // for it, and the one with other content is marked so that its filter tries it again later.
        var (batcher, hold, blocked) = await BlockFirstBatchAsync(maxBatch: 64);
        await using var releaseAtEnd = hold;
        var key = NewKey();
        byte[] said = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
        byte[] other = [.. said.Select(b => (byte)(b + 1))];
        var first = Join(batcher, key, said);
        var copy = Join(batcher, key, said);
        var different = Join(batcher, key, other);
        await hold.ReleaseAsync();

        await RunAllAsync([blocked, first]);
        Assert.Equal((InboxClaim.DuplicateInBatch, false), (await copy.Claimed.WaitAsync(Patience), copy.DiffersFromCopyInBatch));
        Assert.Equal((InboxClaim.DuplicateInBatch, true), (await different.Claimed.WaitAsync(Patience), different.DiffersFromCopyInBatch));

        // Once the first is applied: the same content is a duplicate, other content a conflict that names what was applied.
        var again = Join(batcher, key, said);
        var conflicting = Join(batcher, key, other);
        var unknown = Join(batcher, key, fingerprint: null);
        Assert.Equal(InboxClaim.Duplicate, await again.Claimed.WaitAsync(Patience));
        Assert.Null(again.ConflictingFingerprint);
        Assert.Equal(InboxClaim.Duplicate, await conflicting.Claimed.WaitAsync(Patience));
        Assert.Equal(said, conflicting.ConflictingFingerprint);
        Assert.Null(unknown.ConflictingFingerprint);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(said, (await db.Inbox.SingleAsync(i => i.MessageKey == key)).PayloadHash);
    }

    /// <summary>By default messages gather for as long as a batch is in the database (no time limit), so nothing here depends on timing.</summary>
    private InboxBatcher NewBatcher(int maxBatch, int concurrentBatches, TimeSpan? gatherLimit = null) =>
        _batcher = new("inbox-batching-test", Kind, maxBatch, concurrentBatches, eagerBatches: 1, fixture.DbContextFactory(), TimeProvider.System,
            NullLogger.Instance, gatherLimit ?? Timeout.InfiniteTimeSpan);

    private BatchMember Join(InboxBatcher batcher, string key, byte[]? fingerprint = null)
    {
        var member = batcher.Join(key, Guid.NewGuid(), Guid.NewGuid(), fingerprint);
        _joined.Add(member);
        return member;
    }

    /// <summary>A batcher whose first batch (one message) waits in its claim for a job-row lock the test holds.</summary>
    private async Task<(InboxBatcher Batcher, RowHold Hold, BatchMember First)> BlockFirstBatchAsync(int maxBatch, TimeSpan? gatherLimit = null)
    {
        var batcher = NewBatcher(maxBatch, concurrentBatches: 4, gatherLimit);
        var blockedKey = NewKey();
        var hold = await HoldJobRowAsync(blockedKey);
        var first = Join(batcher, blockedKey);
        await fixture.WaitForLockWaitersAsync(1);
        return (batcher, hold, first);
    }

    private static string NewKey() => Guid.NewGuid().ToString();

    /// <summary>Each member's consumer succeeds at once; every member must commit.</summary>
    private static async Task RunAllAsync(IReadOnlyList<BatchMember> members)
    {
        foreach (var member in members)
        {
            Assert.Equal(InboxClaim.Run, await member.Claimed.WaitAsync(Patience));
            member.RanSuccessfully([]);
        }

        foreach (var member in members)
        {
            Assert.True(await member.Completed.WaitAsync(Patience));
        }
    }

    /// <summary>How many transactions inserted these members' inbox rows (rows of one transaction share its xmin).</summary>
    private async Task<long> TransactionsThatInsertedAsync(IEnumerable<BatchMember> members)
    {
        var keys = members.Select(m => m.MessageKey).ToArray();
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(
            "SELECT count(DISTINCT xmin::text) FROM inbox WHERE message_key = ANY(@keys) HAVING count(*) = cardinality(@keys)", connection);
        command.Parameters.AddWithValue("keys", keys);
        return (long)(await command.ExecuteScalarAsync() ?? 0L);
    }

    /// <summary>A queued job row for <paramref name="key"/>, locked by an open transaction until released.</summary>
    private async Task<RowHold> HoldJobRowAsync(string key)
    {
        var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using (var insert = new NpgsqlCommand("""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            VALUES (@id, @kind, @key, @status, 0, now(), now())
            """, connection))
        {
            insert.Parameters.AddWithValue("id", Guid.NewGuid());
            insert.Parameters.AddWithValue("kind", Kind);
            insert.Parameters.AddWithValue("key", key);
            insert.Parameters.AddWithValue("status", JobStatus.Queued);
            await insert.ExecuteNonQueryAsync();
        }

        var transaction = await connection.BeginTransactionAsync();
        await using var lockRow = new NpgsqlCommand("SELECT 1 FROM jobs WHERE kind = @kind AND business_key = @key FOR UPDATE", connection, transaction);
        lockRow.Parameters.AddWithValue("kind", Kind);
        lockRow.Parameters.AddWithValue("key", key);
        await lockRow.ExecuteScalarAsync();
        return new RowHold(connection, transaction);
    }

    private sealed class RowHold(NpgsqlConnection connection, NpgsqlTransaction transaction) : IAsyncDisposable
    {
        private bool _released;

        public async Task ReleaseAsync()
        {
            if (!_released)
            {
                _released = true;
                await transaction.CommitAsync();
            }
        }

        public async ValueTask DisposeAsync()
        {
            await ReleaseAsync();
            await transaction.DisposeAsync();
            await connection.DisposeAsync();
        }
    }
}
