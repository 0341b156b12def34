using Conveyor.Storage;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Failures;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Storage;

/// <summary>How failures the real server raises are classified.</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class DatabaseFailuresTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task A_statement_stopped_by_statement_timeout_is_retried_within_the_budget_not_waited_out_as_an_outage()
    {
        await using var db = fixture.CreateDbContext();
        await using var transaction = await db.Database.BeginTransactionAsync();
        await db.Database.ExecuteSqlRawAsync("SET LOCAL statement_timeout = 50");

        var failure = await Assert.ThrowsAnyAsync<Exception>(() => db.Database.ExecuteSqlRawAsync("SELECT pg_sleep(5)"));

        // Requeued as "database unavailable", a query that is always too slow would go round forever
        // with its retry budget untouched; as a transient failure it is retried, then dead-lettered.
        Assert.True(DatabaseFailures.IsQueryCanceled(failure), failure.ToString());
        Assert.False(DatabaseFailures.IsUnavailable(failure), failure.ToString());
        Assert.True(FailureClassifier.IsTransient(failure));
    }

    [Fact]
    public async Task Contexts_get_the_servers_statement_limit_and_a_longer_client_one_and_migrations_neither()
    {
        // Npgsql's own timeout is a read that failed, which reads as an outage (a query that is always
        // too slow went round for ever); the server's limit, reached first, is a statement failure.
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal($"{StorageServiceCollectionExtensions.StatementTimeoutSeconds}s", await ShowStatementTimeoutAsync(db));
            Assert.Equal(StorageServiceCollectionExtensions.CommandTimeoutSeconds, new NpgsqlConnectionStringBuilder(db.Database.GetConnectionString()).CommandTimeout);
        }

        await using (var migrating = fixture.CreateDbContext())
        {
            await StorageServiceCollectionExtensions.WithoutStatementLimitsAsync(migrating);

            Assert.Equal("0", await ShowStatementTimeoutAsync(migrating));
            Assert.Equal(0, migrating.Database.GetCommandTimeout());
        }
    }

    private static async Task<string> ShowStatementTimeoutAsync(DbContext db) =>
        (await db.Database.SqlQueryRaw<string>("SELECT current_setting('statement_timeout') AS \"Value\"").ToListAsync()).Single();

    [Fact]
    public async Task A_login_the_server_refuses_is_an_outage()
    {
        var wrongPassword = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Password = "not-the-password", Pooling = false };
        var missingDatabase = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Database = $"{fixture.DatabaseName}_missing", Pooling = false };

        AssertOutage(await OpenFailureAsync(wrongPassword.ConnectionString), PostgresErrorCodes.InvalidPassword);
        AssertOutage(await OpenFailureAsync(missingDatabase.ConnectionString), PostgresErrorCodes.InvalidCatalogName);
    }

    [Fact]
    public async Task A_database_closed_to_connections_or_to_this_role_is_an_outage()
    {
        await using var scratch = await ScratchDatabase.CreateAsync(fixture, "closed");
        var connectionString = new NpgsqlConnectionStringBuilder(scratch.ConnectionString) { Pooling = false }.ConnectionString;

        await scratch.ExecuteInRunDatabaseAsync($"ALTER DATABASE \"{scratch.Name}\" ALLOW_CONNECTIONS false");
        var closed = await OpenFailureAsync(connectionString);
        AssertOutage(closed, PostgresErrorCodes.ObjectNotInPrerequisiteState);
        Assert.Equal("FATAL", Assert.IsType<PostgresException>(closed).InvariantSeverity);

        await scratch.ExecuteInRunDatabaseAsync($"ALTER DATABASE \"{scratch.Name}\" ALLOW_CONNECTIONS true");
        await scratch.ExecuteInRunDatabaseAsync($"REVOKE CONNECT ON DATABASE \"{scratch.Name}\" FROM PUBLIC, CURRENT_USER");
        AssertOutage(await OpenFailureAsync(connectionString), PostgresErrorCodes.InsufficientPrivilege);
    }

    [Fact]
    public async Task A_schema_behind_the_code_is_an_outage()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using (var setup = new NpgsqlCommand("CREATE TEMP TABLE old_shape (id int)", connection))
        {
            await setup.ExecuteNonQueryAsync();
        }

        // What a pod started before its migration meets, for every message alike.
        AssertOutage(await StatementFailureAsync(connection, "SELECT * FROM table_of_a_later_migration"), PostgresErrorCodes.UndefinedTable);
        AssertOutage(await StatementFailureAsync(connection, "SELECT column_of_a_later_migration FROM old_shape"), PostgresErrorCodes.UndefinedColumn);
    }

    [Fact]
    public async Task A_database_that_takes_no_writes_is_an_outage()
    {
        // A standby a failover or a pooler left the service on, or a server an operator (or a managed
        // service whose disk is nearly full) set read-only: every write of every message fails alike.
        var readOnly = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Options = "-c default_transaction_read_only=on", Pooling = false };
        await using var connection = new NpgsqlConnection(readOnly.ConnectionString);
        await connection.OpenAsync();

        AssertOutage(await StatementFailureAsync(connection, "CREATE TEMP TABLE written (id int)"), PostgresErrorCodes.ReadOnlySqlTransaction);
    }

    [Fact]
    public async Task What_a_statement_or_its_data_breaks_is_no_outage()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using (var setup = new NpgsqlCommand("CREATE TEMP TABLE t (id int PRIMARY KEY); CREATE TEMP SEQUENCE s; INSERT INTO t VALUES (1)", connection))
        {
            await setup.ExecuteNonQueryAsync();
        }

        // The same SQL state as a database closed to connections, raised by a statement (ERROR, not FATAL).
        AssertNoOutage(await StatementFailureAsync(connection, "SELECT currval('s')"), PostgresErrorCodes.ObjectNotInPrerequisiteState);
        AssertNoOutage(await StatementFailureAsync(connection, "INSERT INTO t VALUES (1)"), PostgresErrorCodes.UniqueViolation);
        AssertNoOutage(await StatementFailureAsync(connection, "SELECT 'x'::int"), PostgresErrorCodes.InvalidTextRepresentation);
    }

    private static void AssertOutage(Exception failure, string sqlState)
    {
        Assert.Equal(sqlState, Assert.IsType<PostgresException>(failure).SqlState);
        Assert.True(DatabaseFailures.IsUnavailable(failure), failure.ToString());
        Assert.True(DatabaseFailures.IsUnavailable(new DbUpdateException("wrapped", failure)), failure.ToString());
    }

    private static void AssertNoOutage(Exception failure, string sqlState)
    {
        Assert.Equal(sqlState, Assert.IsType<PostgresException>(failure).SqlState);
        Assert.False(DatabaseFailures.IsUnavailable(failure), failure.ToString());
        Assert.False(DatabaseFailures.IsUnavailable(new DbUpdateException("wrapped", failure)), failure.ToString());
    }

    private static async Task<Exception> OpenFailureAsync(string connectionString)
    {
        await using var connection = new NpgsqlConnection(connectionString);
        return await Assert.ThrowsAnyAsync<Exception>(() => connection.OpenAsync());
    }

    private static async Task<Exception> StatementFailureAsync(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        return await Assert.ThrowsAnyAsync<Exception>(() => command.ExecuteNonQueryAsync());
    }
}
