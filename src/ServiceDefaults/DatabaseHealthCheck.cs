using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// Opens a connection of the application's pool and runs <c>SELECT 1</c>. Unhealthy names the cause
/// (<see cref="HealthReasons"/>). It talks to the connection directly rather than through EF Core, so
/// a database outage costs no EF Core error line per probe: <see cref="HealthTransitions"/> logs one
/// warning when the state changes.
/// </summary>
internal sealed class DatabaseHealthCheck(IServiceScopeFactory scopes) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        await using var scope = scopes.CreateAsyncScope();
        var connection = scope.ServiceProvider.GetRequiredService<ConveyorDbContext>().Database.GetDbConnection();
        var connectionString = connection.ConnectionString;
        try
        {
            await connection.OpenAsync(cancellationToken);
            await using var command = connection.CreateCommand();
            command.CommandText = "SELECT 1";
            await command.ExecuteScalarAsync(cancellationToken);
            return HealthCheckResult.Healthy("PostgreSQL answers");
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
