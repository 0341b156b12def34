using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Npgsql;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// Opens a connection of the application's pool and asks whether the newest migration this build
/// knows has been applied. Unhealthy names the cause (<see cref="HealthReasons"/>): the database out of
/// reach, or a schema behind the code (a pod started before its migration Job ran, which would answer
/// 503 to every submission and leave every job in its queue), so Kubernetes sends it no traffic and a
/// rollout waits for the migration. A schema ahead of the code (an older pod during a rolling upgrade,
/// after the new version's migration) is fine: migrations only add. It talks to the connection directly
/// rather than through EF Core, so a database outage costs no EF Core error line per probe:
/// <see cref="HealthTransitions"/> logs one warning when the state changes.
/// A migration holds the history table locked (EF Core's migration lock, <c>ACCESS EXCLUSIVE</c>) for
/// as long as it runs, which for an index built on a large table is minutes: the probe waits for that
/// lock at most <see cref="HistoryLockWaitMilliseconds"/>, and then answers from what this process saw before. A
/// process that has seen its schema applied stays ready (migrations only add, so the running one cannot
/// take its schema away); every pod of a deployment turning unready for the length of the next
/// version's migration would take the Api out of its Service. One that has not seen it stays unready.
/// </summary>
internal sealed class DatabaseHealthCheck(IServiceScopeFactory scopes, DatabaseHealthCheck.SchemaSeen seen) : IHealthCheck
{
    /// <summary>
    /// How long a probe waits for the migrations history while a migration holds it: well under
    /// <see cref="HealthExtensions.CheckTimeout"/>, so the answer is this check's, not the timeout's.
    /// </summary>
    internal const int HistoryLockWaitMilliseconds = 300;

    /// <summary>The newest migration of this build (the same for every probe of the process).</summary>
    private static string? _newestMigration;

    /// <summary>Whether this process has seen its schema applied (one per process: a singleton).</summary>
    internal sealed class SchemaSeen
    {
        public volatile bool Applied;
    }

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        await using var scope = scopes.CreateAsyncScope();
        var database = scope.ServiceProvider.GetRequiredService<ConveyorDbContext>().Database;
        var newest = _newestMigration ??= database.GetMigrations().Last();
        var connection = database.GetDbConnection();
        var connectionString = connection.ConnectionString;
        try
        {
            await connection.OpenAsync(cancellationToken);
            // The lock timeout is the transaction's own (SET LOCAL): the connection goes back to the pool as it came.
            await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
            await using var command = connection.CreateCommand();
            command.Transaction = transaction;
            command.CommandText = $"SET LOCAL lock_timeout = {HistoryLockWaitMilliseconds}";
            await command.ExecuteNonQueryAsync(cancellationToken);
            command.CommandText = "SELECT max(migration_id) FROM __ef_migrations_history";
            string? applied;
            try
            {
                applied = await command.ExecuteScalarAsync(cancellationToken) as string;
            }
            catch (PostgresException exception) when (exception.SqlState == PostgresErrorCodes.UndefinedTable)
            {
                // No history table at all: a database never migrated.
                applied = null;
            }
            catch (PostgresException exception) when (exception.SqlState == PostgresErrorCodes.LockNotAvailable)
            {
                return seen.Applied
                    ? HealthCheckResult.Healthy(
                        "PostgreSQL answers; a migration is running (it holds the migrations history), and this version's schema was applied before it")
                    : new HealthCheckResult(context.Registration.FailureStatus,
                        $"A migration is running (it holds the migrations history); this version needs migration {newest}, " +
                        "which this process has not seen applied yet.");
            }

            if (applied is null || string.CompareOrdinal(applied, newest) < 0)
            {
                return new HealthCheckResult(context.Registration.FailureStatus,
                    $"The database schema is behind this version: it needs migration {newest}, the newest applied is {applied ?? "none"}. " +
                    "Run the migrations (`Conveyor.Worker migrate`, the migration Job) before this version.");
            }

            seen.Applied = true;
            return HealthCheckResult.Healthy("PostgreSQL answers; the schema is this version's or newer");
        }
        catch (Exception exception) when (!cancellationToken.IsCancellationRequested)
        {
            return new HealthCheckResult(context.Registration.FailureStatus, HealthReasons.Describe(exception, connectionString), exception);
        }
        finally
        {
            await connection.CloseAsync();
        }
    }
}
