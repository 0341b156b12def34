using System.Net;
using System.Net.Http.Json;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Npgsql;

namespace Conveyor.Tests.Api;

/// <summary>
/// ADR 0012: the Api stamps a job's <c>created_at</c> before its row waits for anything (a batch slot, a connection, an
/// Idempotency-Key's lock), so a row can commit after jobs created later than it. A row whose write starts too late for
/// the settle horizon is refused (503), not written out of order.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class JobListingSettleTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The Api's Idempotency-Key lock class (<see cref="KeyLocks"/>).</summary>
    private const int KeyLockClass = 0x43_4A_4B_59;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_submission_whose_row_write_starts_too_late_for_the_horizon_is_refused_and_writes_nothing(bool scheduled)
    {
        // 6 s: a write must start within 2 s of the submission.
        await using var api = await fixture.StartApiAsync(Settings(listingSettleSeconds: 6));
        var paymentId = Guid.NewGuid();
        var body = scheduled
            ? JobRequests.ScheduledChargePayment(paymentId, DateTimeOffset.UtcNow.AddHours(1))
            : JobRequests.ChargePayment(paymentId);
        var key = $"late-{Guid.NewGuid():N}";

        var held = await HoldKeyAsync(key);
        var submission = api.Client.PostJobAsync(JobKinds.ChargePayment, body, key);
        // Waiting, so created_at was stamped before now: hold the lock until the write can no longer start in time.
        var waitingSince = await WaitUntilWaitingForTheLockAsync();
        await Eventually.AssertAsync(async () => Assert.True(await DatabaseNowAsync() > waitingSince + TimeSpan.FromSeconds(2)));
        await held.DisposeAsync();

        using (var refused = await submission)
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            Assert.NotNull(refused.Headers.RetryAfter);
        }

        Assert.Empty((await api.Client.GetFromJsonAsync<JobPage>($"/api/jobs?kind=charge-payment&businessKey={paymentId}"))!.Items);

        // Nothing was written: the same request again creates the job.
        using var again = await api.Client.PostJobAsync(JobKinds.ChargePayment, body, key);
        Assert.Equal(HttpStatusCode.Accepted, again.StatusCode);
    }

    private static Dictionary<string, string?> Settings(int listingSettleSeconds) => new()
    {
        ["Jobs:ListingSettleSeconds"] = listingSettleSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture),
        ["RateLimiting:Enabled"] = "false",
    };

    /// <summary>Holds <paramref name="key"/>'s lock exclusively until disposed (the transaction then ends).</summary>
    private async Task<NpgsqlConnection> HoldKeyAsync(string key)
    {
        var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        var transaction = await connection.BeginTransactionAsync();
        await using var take = new NpgsqlCommand("SELECT pg_advisory_xact_lock($1, hashtext($2))", connection, transaction);
        take.Parameters.AddWithValue(KeyLockClass);
        take.Parameters.AddWithValue(key);
        await take.ExecuteNonQueryAsync();
        return connection;
    }

    /// <summary>Once a session waits for an advisory lock: the database's clock then.</summary>
    private async Task<DateTimeOffset> WaitUntilWaitingForTheLockAsync()
    {
        DateTimeOffset? since = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var connection = new NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            // Other runs share the server: only this database's Idempotency-Key locks.
            await using var waiting = new NpgsqlCommand(
                """
                SELECT clock_timestamp() FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted AND classid = $1::oid
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 LIMIT 1
                """, connection);
            waiting.Parameters.AddWithValue((long)KeyLockClass);
            since = (DateTime?)await waiting.ExecuteScalarAsync();
            Assert.NotNull(since);
        });
        return since!.Value;
    }

    private async Task<DateTimeOffset> DatabaseNowAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var now = new NpgsqlCommand("SELECT clock_timestamp()", connection);
        return (DateTime)(await now.ExecuteScalarAsync())!;
    }
}
