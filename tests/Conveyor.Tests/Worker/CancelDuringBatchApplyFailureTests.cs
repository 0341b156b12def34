using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// An inbox batch whose writes fail after its consumer ran (the charge went out) still holds the job
/// row's lock: a cancel waiting for it must find the attempt counted and answer 409, not cancel a job
/// that looks unstarted. Driven against <see cref="InboxBatcher"/> directly; the culprit is a staged
/// ledger row whose payment is booked already.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class CancelDuringBatchApplyFailureTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private InboxBatcher? _batcher;

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        if (_batcher is not null)
        {
            await _batcher.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_cancel_waiting_for_a_batch_whose_writes_fail_is_refused_and_the_attempt_stays_counted()
    {
        var (jobId, key, payment) = (Guid.NewGuid(), Guid.NewGuid().ToString(), Guid.NewGuid());
        var now = DateTimeOffset.UtcNow;
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.Add(new Job { Id = jobId, Kind = Kind, BusinessKey = key, Status = JobStatus.Queued, CreatedAt = now, UpdatedAt = now });
            db.Ledger.Add(Ledger(payment));
            await db.SaveChangesAsync();
        }

        await using var api = await fixture.StartApiAsync();
        _batcher = new("inbox-cancel-test", Kind, maxBatch: 64, maxConcurrentBatches: 4, eagerBatches: 1, fixture.DbContextFactory(),
            TimeProvider.System, NullLogger.Instance, Timeout.InfiniteTimeSpan);
        var member = _batcher.Join(key, Guid.NewGuid(), jobId, fingerprint: null);
        Assert.Equal(InboxClaim.Run, await member.Claimed.WaitAsync(Patience));

        // The consumer is "running" (its effect is out); the cancel waits for the batch's row lock.
        var cancel = api.Client.CancelJobAsync(jobId);
        await WaitForCancelBlockedOnLockAsync();
        member.RanSuccessfully([Ledger(payment)]);

        Assert.False(await member.Completed.WaitAsync(Patience));
        Assert.True(member.AttemptRecorded, $"the attempt was not recorded in the batch: {member.BatchFailure}");
        using var response = await cancel;
        await response.AssertProblemAsync(StatusCodes.Status409Conflict);
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
        Assert.Equal(JobStatus.Running, job.Status);
        Assert.Equal(1, job.Attempts);
        // Its retry must be able to claim it again.
        Assert.False(await check.Inbox.AnyAsync(i => i.MessageKey == key));
    }

    private static LedgerEntry Ledger(Guid paymentId) => new()
    {
        PaymentId = paymentId,
        AccountId = "acct-cancel",
        AmountMinor = 500,
        Currency = "EUR",
        GatewayChargeId = $"ch_{paymentId:N}",
        ChargedAt = DateTimeOffset.UtcNow,
    };

    private async Task WaitForCancelBlockedOnLockAsync()
    {
        await Eventually.AssertAsync(async () =>
        {
            await using var connection = new NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            await using var query = new NpgsqlCommand(
                """
                SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE jobs%'
                """,
                connection);
            Assert.Equal(1L, (long)(await query.ExecuteScalarAsync())!);
        }, Patience);
    }
}
