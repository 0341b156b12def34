using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A full inbox batch probes the (kind, business_key) index once per message, whatever the planner
/// believes of the jobs table: never analysed (a new deployment, a table that grew faster than
/// autovacuum analysed it), or analysed before the batch's kind was busy (a kind deployed since).
/// Planned as a join against the inserted keys, or as a lookup of an array of them, such statistics
/// made every full batch read every job of its kind. A database of the test's own, so that the
/// table's counters count only the batch and its statistics stay as the test left them.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class InboxClaimPlanTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Kind = "charge-payment";
    private const int Batch = 64;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private string Database => $"{fixture.DatabaseName}_plan";

    private string ConnectionString => new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Database = Database }.ConnectionString;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ExecuteAsync(fixture.ConnectionString, $"CREATE DATABASE \"{Database}\"");
    }

    public async Task DisposeAsync()
    {
        NpgsqlConnection.ClearAllPools();
        await ExecuteAsync(fixture.ConnectionString, $"DROP DATABASE IF EXISTS \"{Database}\" WITH (FORCE)");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_full_batch_reads_no_other_job_of_its_kind_whatever_the_statistics_say(bool analysedBeforeTheKindWasBusy)
    {
        await using (var db = Context())
        {
            await db.Database.MigrateAsync();
        }

        await ExecuteAsync(ConnectionString, "ALTER TABLE jobs SET (autovacuum_enabled = false)");
        if (analysedBeforeTheKindWasBusy)
        {
            // Statistics that know the table but not the kind: a kind deployed, or busy, since the last ANALYZE.
            await ExecuteAsync(ConnectionString, $"""
                INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
                SELECT gen_random_uuid(), 'deliver-webhook', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now()
                  FROM generate_series(1, 500);
                ANALYZE jobs;
                """);
        }

        // Twenty thousand jobs of other messages of the kind, none of them analysed.
        await ExecuteAsync(ConnectionString, $"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{Kind}', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now()
              FROM generate_series(1, 20000)
            """);
        var before = await JobReadsAsync();

        var members = await RunOneFullBatchAsync();

        var after = await JobReadsAsync();
        // The batch's keys are new: each lookup misses in the index and reads no row. Reading the kind's
        // jobs to filter them would read all 20,000, once per batch.
        Assert.True(after.Rows - before.Rows < 1000, $"the batch read {after.Rows - before.Rows} job rows");
        Assert.True(after.Scans > before.Scans, "the batch's job lookups were counted");
        await using var check = Context();
        Assert.Equal(Batch + 1, await check.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded && members.Contains(j.BusinessKey)));
    }

    /// <summary>
    /// One message, then <see cref="Batch"/> more while its consumer runs: with one batch at a time
    /// they wait together and go into the database as one full batch when the first ends.
    /// </summary>
    private async Task<List<string>> RunOneFullBatchAsync()
    {
        await using var batcher = new InboxBatcher("inbox-plan-test", Kind, Batch, maxConcurrentBatches: 1, eagerBatches: 1,
            new Contexts(this), TimeProvider.System, NullLogger.Instance, Timeout.InfiniteTimeSpan);
        var first = batcher.Join(Guid.NewGuid().ToString(), Guid.NewGuid(), Guid.NewGuid());
        Assert.Equal(InboxClaim.Run, await first.Claimed.WaitAsync(Patience));

        var full = Enumerable.Range(0, Batch).Select(_ => batcher.Join(Guid.NewGuid().ToString(), Guid.NewGuid(), Guid.NewGuid())).ToList();
        first.RanSuccessfully([]);
        Assert.True(await first.Completed.WaitAsync(Patience));
        foreach (var member in full)
        {
            Assert.Equal(InboxClaim.Run, await member.Claimed.WaitAsync(Patience));
            member.RanSuccessfully([]);
        }

        foreach (var member in full)
        {
            Assert.True(await member.Completed.WaitAsync(Patience));
        }

        return [first.MessageKey, .. full.Select(m => m.MessageKey)];
    }

    /// <summary>
    /// The jobs table's scans, and the rows they read (sequentially or fetched through an index), once
    /// every other connection to the database has ended: a backend reports its counts when it exits, so
    /// these include everything done until now.
    /// </summary>
    private async Task<(long Scans, long Rows)> JobReadsAsync()
    {
        NpgsqlConnection.ClearAllPools();
        await Eventually.AssertAsync(async () => Assert.Equal(0L, await ScalarAsync(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()")));
        return (await ScalarAsync("SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'jobs'"),
            await ScalarAsync("SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'jobs'"));
    }

    private async Task<long> ScalarAsync(string sql)
    {
        // Pooling off: this connection must not be one that a later count waits for.
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(ConnectionString) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        return Convert.ToInt64(await command.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture);
    }

    private ConveyorDbContext Context()
    {
        var options = new DbContextOptionsBuilder<ConveyorDbContext>();
        StorageServiceCollectionExtensions.Configure(options, ConnectionString);
        return new ConveyorDbContext(options.Options);
    }

    private static async Task ExecuteAsync(string connectionString, string sql)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }

    private sealed class Contexts(InboxClaimPlanTests test) : IDbContextFactory<ConveyorDbContext>
    {
        public ConveyorDbContext CreateDbContext() => test.Context();
    }
}
