using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Tests.Api;

/// <summary>
/// The job-row writer (group commit) on the real database: what each submission learns when a batch
/// deadlocks, and which failures to write a row are an unavailable database (503) and which are not (500).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class JobRowsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>Tells the writer's connections apart from the test's own in <c>pg_stat_activity</c>.</summary>
    private const string WriterName = "conveyor-job-rows-test";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// Two rows meet in one batch, which deadlocks with another transaction; written one by one, the
    /// first is committed and the second fails. Each submission learns its own outcome: the first,
    /// written, is not told it failed (its client would get a 503 and its row would stay queued with
    /// no command).
    /// </summary>
    [Fact]
    public async Task After_a_deadlock_each_row_written_alone_reports_its_own_outcome()
    {
        await using var rows = new JobRows(new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { ApplicationName = WriterName }.ConnectionString,
        }).Build(), Options.Create(new JobListingOptions()), TimeProvider.System);
        await using var holder = await OpenAsync();
        await using var rival = await OpenAsync();
        var deadlocksBefore = await DeadlocksAsync();

        // Every batch slot busy: four rows, one batch each, wait for keys another transaction holds.
        var held = Enumerable.Range(0, 4).Select(_ => NewJob()).ToList();
        var hold = await holder.BeginTransactionAsync();
        foreach (var job in held)
        {
            await InsertAsync(holder, job);
        }

        var heldOutcomes = new List<Task<bool>>();
        foreach (var job in held)
        {
            heldOutcomes.Add(rows.TryInsertAsync(NewJob(job.BusinessKey), CancellationToken.None));
            await WaitForWaitingWritersAsync(heldOutcomes.Count);
        }

        // So these two wait for a slot together and go in one batch. The rival holds the second's key.
        var (first, second) = (NewJob(), NewJob());
        var rivalry = await rival.BeginTransactionAsync();
        await InsertAsync(rival, NewJob(second.BusinessKey));
        var firstOutcome = rows.TryInsertAsync(first, CancellationToken.None);
        var secondOutcome = rows.TryInsertAsync(second, CancellationToken.None);
        await hold.RollbackAsync();
        Assert.All(await Task.WhenAll(heldOutcomes), inserted => Assert.True(inserted));

        // The batch inserted the first row and waits for the second's key; the rival now wants the
        // first's key: a deadlock. The batch, waiting longer, is the one PostgreSQL breaks.
        await WaitForWaitingWritersAsync(1);
        await ExecuteAsync(rival, "SAVEPOINT first_key");
        await InsertAsync(rival, NewJob(first.BusinessKey), onConflictDoNothing: true);

        // One by one: the first row waits for the rival's hold on its key, which the rival then lets go,
        // and is committed.
        await WaitForWaitingWritersAsync(1);
        await ExecuteAsync(rival, "ROLLBACK TO SAVEPOINT first_key");
        await Eventually.AssertAsync(async () => Assert.True(await IsWrittenAsync(first)), TimeSpan.FromSeconds(30));

        // The second waits for the rival's hold on its key, and its statement is cancelled.
        var secondWriter = Assert.Single(await WaitForWaitingWritersAsync(1));
        await ExecuteAsync(holder, $"SELECT pg_cancel_backend({secondWriter})");
        await rivalry.RollbackAsync();

        Assert.True(await firstOutcome);
        var failure = await Assert.ThrowsAnyAsync<Exception>(() => secondOutcome);
        Assert.Equal(PostgresErrorCodes.QueryCanceled, Assert.IsType<PostgresException>(failure.InnerException).SqlState);
        Assert.False(await IsWrittenAsync(second));
        // The rows went one by one because their batch deadlocked, not because they came apart.
        await Eventually.AssertAsync(async () => Assert.Equal(deadlocksBefore + 1, await DeadlocksAsync()), TimeSpan.FromSeconds(30));
    }

    /// <summary>A row the database refuses (here a CHECK constraint) is a fault, not an outage: 500, no Retry-After.</summary>
    [Fact]
    public async Task A_job_row_the_database_refuses_is_a_500_not_a_503()
    {
        await using var api = await fixture.StartApiAsync();
        await using var admin = await OpenAsync();
        await ExecuteAsync(admin, $"ALTER TABLE jobs ADD CONSTRAINT test_no_reports CHECK (kind <> '{JobKinds.GenerateReport}')");
        try
        {
            using var single = await api.Client.PostJobAsync(JobKinds.GenerateReport, JobRequests.GenerateReport(Guid.NewGuid()));
            await single.AssertProblemAsync(StatusCodes.Status500InternalServerError);
            Assert.Null(single.Headers.RetryAfter);

            using var batch = await JobBatchTests.PostBatchAsync(api, JobKinds.GenerateReport,
                JobBatchTests.Batch([JobRequests.GenerateReport(Guid.NewGuid()), JobRequests.GenerateReport(Guid.NewGuid())]));
            await batch.AssertProblemAsync(StatusCodes.Status500InternalServerError);

            // Other kinds are untouched.
            await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        }
        finally
        {
            await ExecuteAsync(admin, "ALTER TABLE jobs DROP CONSTRAINT test_no_reports");
        }
    }

    /// <summary>A database that cannot be reached is still an outage: 503 with Retry-After.</summary>
    [Fact]
    public async Task A_job_row_the_database_cannot_be_reached_for_is_a_503()
    {
        // A loopback port nothing listens on: connections are refused.
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Host = "127.0.0.1", Port = ClosedPort.Number }.ConnectionString,
        });

        using var response = await api.Client.PostJobAsync(JobKinds.GenerateReport, JobRequests.GenerateReport(Guid.NewGuid()));

        await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.NotNull(response.Headers.RetryAfter);
    }

    private static Job NewJob(string? businessKey = null)
    {
        var now = DateTimeOffset.UtcNow;
        return new Job
        {
            Id = Guid.CreateVersion7(),
            Kind = JobKinds.ChargePayment,
            BusinessKey = businessKey ?? Guid.NewGuid().ToString("D"),
            Status = JobStatus.Queued,
            CreatedAt = now,
            UpdatedAt = now,
        };
    }

    /// <summary>Deadlocks PostgreSQL has detected in this run's database (its statistics lag a little).</summary>
    private async Task<long> DeadlocksAsync()
    {
        await using var connection = await OpenAsync();
        await using var query = new NpgsqlCommand("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()", connection);
        return (long)(await query.ExecuteScalarAsync())!;
    }

    private async Task<bool> IsWrittenAsync(Job job)
    {
        await using var db = fixture.CreateDbContext();
        return await db.Jobs.AnyAsync(j => j.Id == job.Id);
    }

    private async Task<NpgsqlConnection> OpenAsync()
    {
        var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        return connection;
    }

    private static async Task InsertAsync(NpgsqlConnection connection, Job job, bool onConflictDoNothing = false)
    {
        await using var insert = new NpgsqlCommand(
            "INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at) VALUES ($1, $2, $3, $4, 0, $5, $5)"
            + (onConflictDoNothing ? " ON CONFLICT DO NOTHING" : ""),
            connection)
        {
            Parameters =
            {
                new() { Value = job.Id },
                new() { Value = job.Kind },
                new() { Value = job.BusinessKey },
                new() { Value = job.Status },
                new() { Value = job.CreatedAt },
            },
        };
        await insert.ExecuteNonQueryAsync();
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }

    /// <summary>Waits until exactly <paramref name="count"/> of the writer's connections wait for a lock; their process ids.</summary>
    private async Task<List<int>> WaitForWaitingWritersAsync(int count)
    {
        var waiting = new List<int>();
        await Eventually.AssertAsync(async () =>
        {
            await using var connection = await OpenAsync();
            await using var query = new NpgsqlCommand(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND wait_event_type = 'Lock'",
                connection)
            {
                Parameters = { new() { Value = WriterName } },
            };
            waiting.Clear();
            await using var reader = await query.ExecuteReaderAsync();
            while (await reader.ReadAsync())
            {
                waiting.Add(reader.GetInt32(0));
            }

            Assert.Equal(count, waiting.Count);
        }, TimeSpan.FromSeconds(30));
        return waiting;
    }
}
