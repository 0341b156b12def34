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
/// </summary>
internal sealed class DatabaseHealthCheck(IServiceScopeFactory scopes) : IHealthCheck
{
    /// <summary>The newest migration of this build (the same for every probe of the process).</summary>
    private static string? _newestMigration;

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
            await using var command = connection.CreateCommand();
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

            if (applied is null || string.CompareOrdinal(applied, newest) < 0)
            {
                return new HealthCheckResult(context.Registration.FailureStatus,
                    $"The database schema is behind this version: it needs migration {newest}, the newest applied is {applied ?? "none"}. " +
                    "Run the migrations (`Conveyor.Worker migrate`, the migration Job) before this version.");
            }

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
