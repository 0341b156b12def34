using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// An empty database of a test's own beside the run's (named after it), for what must not touch the
/// run's database: a schema left behind the code, a server setting, a table's statistics or counters.
/// Dropped, with any connection still open to it, on dispose.
/// </summary>
public sealed class ScratchDatabase : IAsyncDisposable
{
    private readonly string _runConnectionString;

    private ScratchDatabase(string runConnectionString, string name)
    {
        _runConnectionString = runConnectionString;
        Name = name;
        ConnectionString = new NpgsqlConnectionStringBuilder(runConnectionString) { Database = name }.ConnectionString;
    }

    public string Name { get; }

    public string ConnectionString { get; }

    /// <summary>Creates <c>{run database}_{suffix}</c>, dropping one an earlier test failed to drop.</summary>
    public static async Task<ScratchDatabase> CreateAsync(ConveyorFixture fixture, string suffix)
    {
        var database = new ScratchDatabase(fixture.ConnectionString, $"{fixture.DatabaseName}_{suffix}");
        await DatabaseDrop.ForceAsync(fixture.ConnectionString, database.Name);
        await ExecuteAsync(fixture.ConnectionString, $"CREATE DATABASE \"{database.Name}\"");
        return database;
    }

    /// <summary>Runs <paramref name="sql"/> in the run's database, where statements about this one (ALTER DATABASE, REVOKE) go.</summary>
    public Task ExecuteInRunDatabaseAsync(string sql) => ExecuteAsync(_runConnectionString, sql);

    /// <summary>Runs <paramref name="sql"/> (one or more statements) in this database.</summary>
    public Task ExecuteAsync(string sql) => ExecuteAsync(ConnectionString, sql);

    /// <summary>
    /// Reads <paramref name="sql"/> (a number from the statistics views) once every other connection to
    /// this database has ended: a backend reports its counts when it exits, so the number includes all
    /// that was done until now. Pooled connections are closed for it, in this process (the services a
    /// test hosts in-process included) as soon as they are idle.
    /// </summary>
    private async Task<long> StatisticAsync(string sql)
    {
        await Eventually.AssertAsync(async () =>
        {
            NpgsqlConnection.ClearAllPools();
            Assert.Equal(0L, await ScalarAsync(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()"));
        });
        return await ScalarAsync(sql);
    }

    /// <summary>Rows of <paramref name="table"/> its scans have read so far, sequentially or fetched through an index.</summary>
    public Task<long> RowsReadAsync(string table) => StatisticAsync(
        $"SELECT seq_tup_read + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = '{table}'");

    /// <summary>Pages of <paramref name="table"/> and its indexes read so far, from the cache or the disk.</summary>
    public Task<long> PagesReadAsync(string table) => StatisticAsync(
        $"SELECT heap_blks_read + heap_blks_hit + coalesce(idx_blks_read + idx_blks_hit, 0) FROM pg_statio_user_tables WHERE relname = '{table}'");

    /// <summary>Applies every migration (the schema the code expects), or those up to <paramref name="target"/>.</summary>
    public async Task MigrateAsync(string? target = null)
    {
        await using var db = CreateDbContext();
        await db.Database.MigrateAsync(target);
    }

    public ConveyorDbContext CreateDbContext()
    {
        var options = new DbContextOptionsBuilder<ConveyorDbContext>();
        StorageServiceCollectionExtensions.Configure(options, ConnectionString);
        return new ConveyorDbContext(options.Options);
    }

    /// <summary><see cref="CreateDbContext"/> as a factory, for components a test builds itself.</summary>
    public IDbContextFactory<ConveyorDbContext> DbContextFactory() => new Contexts(this);

    public async ValueTask DisposeAsync()
    {
        // Pooled connections to it would hold the database open; the drop ends the rest.
        NpgsqlConnection.ClearAllPools();
        await DatabaseDrop.ForceAsync(_runConnectionString, Name);
    }

    private async Task<long> ScalarAsync(string sql)
    {
        // Unpooled: not a connection that a later count would wait for.
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(ConnectionString) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        return Convert.ToInt64(await command.ExecuteScalarAsync(), System.Globalization.CultureInfo.InvariantCulture);
    }

    private static async Task ExecuteAsync(string connectionString, string sql)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection) { CommandTimeout = DatabaseDrop.StatementTimeoutSeconds };
        await command.ExecuteNonQueryAsync();
    }

    private sealed class Contexts(ScratchDatabase database) : IDbContextFactory<ConveyorDbContext>
    {
        public ConveyorDbContext CreateDbContext() => database.CreateDbContext();
    }
}
