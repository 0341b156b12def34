using System.Net;
using System.Net.Http.Json;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Conveyor.Tests.Api;

/// <summary>
/// ADR 0013: the Api stamps a job's <c>created_at</c> before its row waits for anything (a batch slot, a connection, an
/// Idempotency-Key's lock), so a row can commit after jobs created later than it, and after a client's cursor has passed
/// its place. A client following <c>GET /api/jobs?order=oldest</c> by its cursor still gets such a job, because the
/// listing stops at the settle horizon, and a row whose write starts too late for that horizon is refused (503), not
/// written out of order.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class JobListingSettleTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The Api's Idempotency-Key lock class (<see cref="KeyLocks"/>).</summary>
    private const int KeyLockClass = 0x43_4A_4B_59;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_job_whose_row_commits_after_later_jobs_reaches_a_client_polling_with_its_cursor()
    {
        // 15 s: a held submission has 5 s to start its write, plenty for the few requests made while it is held
        // (two submissions and a short poll, well under a second). The test waits out the horizon once, so a
        // longer one only made it slower (30 s took 33 s).
        await using var api = await fixture.StartApiAsync(Settings(listingSettleSeconds: 15));
        var old = new[]
        {
            (await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))).JobId,
            (await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))).JobId,
        };

        // The late job's insert waits for its key's lock, held as recording an alias of the key holds it.
        var key = $"late-{Guid.NewGuid():N}";
        var held = await HoldKeyAsync(key);
        var late = api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()), key);
        await WaitUntilWaitingForTheLockAsync();

        // Created after it, committed before it.
        var later = new[]
        {
            (await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))).JobId,
            (await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))).JobId,
        };

        // The client reads to the end of what it is given, then keeps its cursor.
        var client = new JobFeedClient(api.Client, "order=oldest&limit=1");
        await client.PollToTheEndAsync();

        await held.DisposeAsync();
        Guid lateId;
        using (var response = await late)
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            lateId = (await response.Content.ReadFromJsonAsync<JobAccepted>())!.JobId;
        }

        // Polling on with its cursor, the client gets every job once, the late one in its place by createdAt.
        Guid[] expected = [.. old, lateId, .. later];
        await Eventually.AssertAsync(
            async () =>
            {
                await client.PollAsync();
                Assert.Contains(lateId, client.Seen);
                Assert.Superset(expected.ToHashSet(), client.Seen.ToHashSet());
            },
            timeout: TimeSpan.FromSeconds(120));
        Assert.Equal(expected, client.Seen);
    }

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

    /// <summary>
    /// A row's age is read on the clock that stamped it, not against the database's: an Api whose clock is behind the
    /// database's by more than a third of the horizon had every submission refused (503), an outage from a clock.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_submission_from_an_Api_whose_clock_is_behind_the_databases_is_written(bool scheduled)
    {
        // 30 s behind with a horizon of 60 s: the write must start within 20 s.
        await using var api = await fixture.StartApiAsync(
            Settings(listingSettleSeconds: 60), builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromSeconds(-30))));
        var paymentId = Guid.NewGuid();
        var body = scheduled
            ? JobRequests.ScheduledChargePayment(paymentId, DateTimeOffset.UtcNow.AddHours(1))
            : JobRequests.ChargePayment(paymentId);

        using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, body, $"skewed-{Guid.NewGuid():N}");

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        Assert.Single((await api.Client.GetFromJsonAsync<JobPage>($"/api/jobs?kind=charge-payment&businessKey={paymentId}"))!.Items);
    }

    [Fact]
    public async Task The_oldest_first_listing_stops_at_the_horizon_and_its_cursor_waits_there()
    {
        await using var api = await fixture.StartApiAsync(Settings(listingSettleSeconds: 3600));
        var job = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));

        // Newest first, the job is there at once; oldest first, not before it settles, and the cursor is never null.
        Assert.Equal(job.JobId, Assert.Single((await api.Client.GetFromJsonAsync<JobPage>("/api/jobs"))!.Items).JobId);
        var feed = (await api.Client.GetFromJsonAsync<JobPage>("/api/jobs?order=oldest"))!;
        Assert.Empty(feed.Items);
        Assert.NotNull(feed.NextCursor);
        var again = (await api.Client.GetFromJsonAsync<JobPage>($"/api/jobs?order=oldest&cursor={feed.NextCursor}"))!;
        Assert.Empty(again.Items);
        Assert.NotNull(again.NextCursor);
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
