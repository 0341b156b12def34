using System.Data.Common;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A batch whose COMMIT was applied but whose answer never came (the connection dropped after the server
/// committed): the batcher must not take the batch for rolled back. Simulated by an interceptor that throws,
/// as Npgsql does for a broken socket, once the server has answered the COMMIT.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxBatchCommitOutcomeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private const string ConsumerId = "inbox-commit-outcome-test";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_batch_whose_commit_applied_but_went_unanswered_completes_its_messages_as_committed()
    {
        var (key, payment) = (Guid.NewGuid().ToString(), Guid.NewGuid());
        var interceptor = new LostCommitAnswer();
        await using var batcher = BatcherWith(interceptor);

        var member = batcher.Join(key, Guid.NewGuid(), null, null);
        Assert.Equal(InboxClaim.Run, await member.Claimed.WaitAsync(Patience));
        interceptor.Armed = true;
        member.RanSuccessfully([Ledger(payment)]);

        var committed = await member.Completed.WaitAsync(Patience);
        Assert.True(interceptor.Fired);
        await using var db = fixture.CreateDbContext();
        // The effect, the inbox row and the job's success are all in the database.
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == payment));
        Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.Kind == Kind && j.BusinessKey == key)).Status);
        // So the message is acked as handled, not failed (its failure path then counted an attempt that never failed).
        Assert.True(committed, $"a committed batch was taken for rolled back: {member.BatchFailure}");
    }

    [Fact]
    public async Task A_failed_attempt_whose_batch_commit_applied_but_went_unanswered_is_counted_once()
    {
        var key = Guid.NewGuid().ToString();
        var interceptor = new LostCommitAnswer();
        await using var batcher = BatcherWith(interceptor);

        var member = batcher.Join(key, Guid.NewGuid(), null, null);
        Assert.Equal(InboxClaim.Run, await member.Claimed.WaitAsync(Patience));
        interceptor.Armed = true;
        member.RanAndFailed();

        // Committed: the batch counted the attempt, and the failure path records its error without counting it again.
        Assert.True(await member.Completed.WaitAsync(Patience), $"a committed batch was taken for rolled back: {member.BatchFailure}");
        Assert.True(interceptor.Fired);
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.SingleAsync(j => j.Kind == Kind && j.BusinessKey == key);
        Assert.Equal(1, job.Attempts);
        Assert.False(await db.Inbox.AnyAsync(i => i.ConsumerId == ConsumerId && i.MessageKey == key));
    }

    [Fact]
    public async Task An_attempt_settled_under_the_batch_locks_whose_commit_applied_but_went_unanswered_is_counted_once()
    {
        // Its effect breaks the ledger's key (the payment's row is there already), so the batch's apply fails and the
        // batch is settled under its row locks: the attempt counted on its job row, its inbox row removed, and committed.
        var (key, payment) = (Guid.NewGuid().ToString(), Guid.NewGuid());
        await using (var db = fixture.CreateDbContext())
        {
            db.Ledger.Add(Ledger(payment));
            await db.SaveChangesAsync();
        }

        var interceptor = new LostCommitAnswer();
        await using var batcher = BatcherWith(interceptor);

        var member = batcher.Join(key, Guid.NewGuid(), null, null);
        Assert.Equal(InboxClaim.Run, await member.Claimed.WaitAsync(Patience));
        interceptor.Armed = true;
        member.RanSuccessfully([Ledger(payment)]);

        Assert.False(await member.Completed.WaitAsync(Patience));
        Assert.True(interceptor.Fired);
        // That commit was applied: the failure path records the error without counting the attempt again (taken
        // for rolled back, the attempt was left for it to count, and the job read attempts 2 after one attempt).
        Assert.True(member.AttemptRecorded, $"a settlement that committed was taken for rolled back: {member.BatchFailure}");
        Assert.Equal(PostgresErrorCodes.UniqueViolation, Assert.IsType<PostgresException>(member.BatchFailure?.GetBaseException()).SqlState);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, (await check.Jobs.SingleAsync(j => j.Kind == Kind && j.BusinessKey == key)).Attempts);
        Assert.False(await check.Inbox.AnyAsync(i => i.ConsumerId == ConsumerId && i.MessageKey == key));
        Assert.Equal(1, await check.Ledger.CountAsync(l => l.PaymentId == payment));
    }

    private static LedgerEntry Ledger(Guid paymentId) => new()
    {
        PaymentId = paymentId,
        AccountId = "acct-commit-outcome",
        AmountMinor = 700,
        Currency = "EUR",
        GatewayChargeId = $"ch_{paymentId:N}",
        ChargedAt = DateTimeOffset.UtcNow,
    };

    /// <summary>Once armed, fails the next commit after the server applied it, as a connection lost before its answer.</summary>
    /// <summary>A batcher of this consumer whose database sessions go through <paramref name="interceptor"/>.</summary>
    private InboxBatcher BatcherWith(LostCommitAnswer interceptor) =>
        new(ConsumerId, Kind, maxBatch: 64, maxConcurrentBatches: 4, eagerBatches: 1,
            new InterceptedContexts(fixture, interceptor), TimeProvider.System, NullLogger.Instance, Timeout.InfiniteTimeSpan);

    private sealed class LostCommitAnswer : DbTransactionInterceptor
    {
        private int _fired;

        public volatile bool Armed;

        public bool Fired => Volatile.Read(ref _fired) == 1;

        public override Task TransactionCommittedAsync(DbTransaction transaction, TransactionEndEventData eventData, CancellationToken cancellationToken = default) =>
            Armed && Interlocked.CompareExchange(ref _fired, 1, 0) == 0
                ? throw new NpgsqlException("Exception while reading from stream", new IOException("Connection reset by peer"))
                : Task.CompletedTask;
    }

    private sealed class InterceptedContexts(ConveyorFixture fixture, IInterceptor interceptor) : IDbContextFactory<ConveyorDbContext>
    {
        public ConveyorDbContext CreateDbContext()
        {
            var options = new DbContextOptionsBuilder<ConveyorDbContext>();
            StorageServiceCollectionExtensions.Configure(options, fixture.ConnectionString);
            options.AddInterceptors(interceptor);
            return new ConveyorDbContext(options.Options);
        }
    }
}
