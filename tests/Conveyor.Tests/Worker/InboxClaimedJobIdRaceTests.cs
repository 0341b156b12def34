using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The single-message inbox (<see cref="Conveyor.Worker.Inbox.InboxFilter{T}"/>) claims the job in its
/// first statement. Two commands under different keys that claim the same unused job id, in two inbox
/// transactions at once, must both run: the second under an id of its own, not failed (for good: a
/// unique violation is permanent) for the first one's claim. So must an attempt counted outside an inbox
/// transaction (<see cref="JobTracker.StartAttemptAsync"/>, <see cref="JobTracker.RecordAttemptFailureAsync"/>).
/// </summary>
[Collection(ThirdLaneCollection.Name)]
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
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System, NullLogger<JobTracker>.Instance);
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

    /// <summary>
    /// The id's lock costs the claim no round trip of its own: it is sent with the claim statement, which
    /// still runs after it, so the race above stays closed (<see cref="Two_commands_claiming_the_same_unused_job_id_in_two_inbox_transactions_at_once_both_run"/>).
    /// </summary>
    [Fact]
    public async Task A_claim_of_an_unused_job_id_costs_one_database_round_trip()
    {
        // Counted on the wire, through a relay in front of the database, as RedeliveryDispatcherTests counts
        // a dispatch: the driver's own events cannot tell statements sent together from statements sent one by one.
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var proxy = await OutageProxy.ToAsync(database.Host!, database.Port);
        var viaProxy = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Port = proxy.Port }.ConnectionString;
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System, NullLogger<JobTracker>.Instance);

        // Its pooled connection is open (the handshake and the type loading are behind it), its statements known.
        for (var i = 0; i < 3; i++)
        {
            await ClaimThroughAsync(proxy, viaProxy, tracker, Guid.NewGuid().ToString(), Guid.NewGuid());
        }

        var (key, claimed) = (Guid.NewGuid().ToString(), Guid.NewGuid());
        var (claim, roundTrips) = await ClaimThroughAsync(proxy, viaProxy, tracker, key, claimed);

        // The BEGIN, the id's lock and the claim, sent together.
        Assert.Equal(1, roundTrips);
        Assert.Equal((InboxClaim.Run, claimed, 1), (claim.Claim, claim.JobId, claim.Attempt));
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((claimed, JobStatus.Running, 1), (job.Id, job.Status, job.Attempts));
    }

    /// <summary>
    /// The lease inbox counts its attempt outside any inbox transaction (<see cref="JobTracker.StartAttemptAsync"/>):
    /// a command claiming the id a single-message inbox transaction holds uncommitted must start under an id of its own.
    /// </summary>
    [Fact]
    public async Task An_attempt_started_under_a_job_id_another_inbox_transaction_holds_uncommitted_starts_under_a_fresh_id()
    {
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System, NullLogger<JobTracker>.Instance);
        var (claimed, keyA, keyB, started) = await WhileAnotherHoldsTheClaimAsync(
            tracker, job => tracker.StartAttemptAsync(job, null, CancellationToken.None));

        Assert.NotNull(started);
        Assert.Equal(1, started.Value.Attempt);
        await AssertBothRunningAsync(claimed, keyA, keyB, started.Value.Id);
    }

    /// <summary>
    /// A failure whose count rolled back with its inbox transaction is counted again on its own
    /// (<see cref="JobTracker.RecordAttemptFailureAsync"/>): recorded, not lost to the other transaction's row.
    /// </summary>
    [Fact]
    public async Task A_failure_counted_under_a_job_id_another_inbox_transaction_holds_uncommitted_is_recorded_under_a_fresh_id()
    {
        var tracker = new JobTracker(fixture.DbContextFactory(), TimeProvider.System, NullLogger<JobTracker>.Instance);
        var (claimed, keyA, keyB, attempt) = await WhileAnotherHoldsTheClaimAsync(tracker, job => tracker.RecordAttemptFailureAsync(
            job, new InvalidOperationException("gateway down"), countAttempt: true, messageId: null, CancellationToken.None));

        Assert.Equal(1, attempt);
        await using var db = fixture.CreateDbContext();
        var failed = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == keyB);
        Assert.Contains("gateway down", failed.LastError);
        await AssertBothRunningAsync(claimed, keyA, keyB, failed.Id);
    }

    /// <summary>
    /// A claims an unused id in an inbox transaction and holds it uncommitted (its consumer running) while
    /// <paramref name="write"/> counts an attempt of B, under another key, claiming the same id; then A commits.
    /// </summary>
    private async Task<(Guid Claimed, string KeyA, string KeyB, TResult Result)> WhileAnotherHoldsTheClaimAsync<TResult>(
        JobTracker tracker, Func<JobRef, Task<TResult>> write)
    {
        var claimed = Guid.NewGuid();
        var (keyA, keyB) = (Guid.NewGuid().ToString(), Guid.NewGuid().ToString());

        await using var dbA = fixture.CreateDbContext();
        await using var transactionA = await dbA.Database.BeginTransactionAsync();
        var a = await tracker.ClaimInTransactionAsync(dbA, ConsumerId, keyA, Guid.NewGuid(), null, new JobRef(Kind, keyA, claimed), CancellationToken.None);
        Assert.Equal((InboxClaim.Run, claimed), (a.Claim, a.JobId));

        var b = Task.Run(() => write(new JobRef(Kind, keyB, claimed)));
        await fixture.WaitForLockWaitersAsync(1);
        await transactionA.CommitAsync();

        return (claimed, keyA, keyB, await b.WaitAsync(Patience));
    }

    /// <summary>
    /// Claims <paramref name="claimed"/> for <paramref name="key"/> in an inbox transaction on a connection
    /// through <paramref name="proxy"/> and commits; the claim and the round trips the claim alone made.
    /// </summary>
    private static async Task<((InboxClaim Claim, Guid? JobId, int? Attempt) Claim, int RoundTrips)> ClaimThroughAsync(
        OutageProxy proxy, string connectionString, JobTracker tracker, string key, Guid claimed)
    {
        var options = new DbContextOptionsBuilder<ConveyorDbContext>();
        StorageServiceCollectionExtensions.Configure(options, connectionString);
        await using var db = new ConveyorDbContext(options.Options);
        await using var transaction = await db.Database.BeginTransactionAsync();
        var before = proxy.RoundTrips;
        var claim = await tracker.ClaimInTransactionAsync(db, ConsumerId, key, Guid.NewGuid(), null, new JobRef(Kind, key, claimed), CancellationToken.None);
        var roundTrips = proxy.RoundTrips - before;
        await transaction.CommitAsync();
        return ((claim.Claim, claim.JobId, claim.Attempt), roundTrips);
    }

    private async Task AssertBothRunningAsync(Guid claimed, string keyA, string keyB, Guid idB)
    {
        Assert.NotEqual(claimed, idB);
        await using var db = fixture.CreateDbContext();
        var jobs = await db.Jobs.AsNoTracking().Where(j => j.BusinessKey == keyA || j.BusinessKey == keyB).ToDictionaryAsync(j => j.BusinessKey);
        Assert.Equal(2, jobs.Count);
        Assert.Equal(claimed, jobs[keyA].Id);
        Assert.Equal(idB, jobs[keyB].Id);
        Assert.All(jobs.Values, j => Assert.Equal((JobStatus.Running, 1), (j.Status, j.Attempts)));
    }
}
