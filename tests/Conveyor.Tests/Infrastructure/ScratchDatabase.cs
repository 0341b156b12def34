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

    /// <summary>Creates <c>{run database}_{suffix}</c>.</summary>
    public static async Task<ScratchDatabase> CreateAsync(ConveyorFixture fixture, string suffix)
    {
        var database = new ScratchDatabase(fixture.ConnectionString, $"{fixture.DatabaseName}_{suffix}");
        await ExecuteAsync(fixture.ConnectionString, $"CREATE DATABASE \"{database.Name}\"");
        return database;
    }

    /// <summary>Runs <paramref name="sql"/> in the run's database, where statements about this one (ALTER DATABASE, REVOKE) go.</summary>
    public Task ExecuteInRunDatabaseAsync(string sql) => ExecuteAsync(_runConnectionString, sql);

    /// <summary>Runs <paramref name="sql"/> (one or more statements) in this database.</summary>
    public Task ExecuteAsync(string sql) => ExecuteAsync(ConnectionString, sql);

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
        // Pooled connections to it would hold the database open; DROP … WITH (FORCE) ends the rest.
        NpgsqlConnection.ClearAllPools();
        await ExecuteAsync(_runConnectionString, $"DROP DATABASE IF EXISTS \"{Name}\" WITH (FORCE)");
    }

    private static async Task ExecuteAsync(string connectionString, string sql)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }

    private sealed class Contexts(ScratchDatabase database) : IDbContextFactory<ConveyorDbContext>
    {
        public ConveyorDbContext CreateDbContext() => database.CreateDbContext();
    }
}
