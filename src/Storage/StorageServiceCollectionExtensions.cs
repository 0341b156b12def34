using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Storage;

public static class StorageServiceCollectionExtensions
{
    public const string ConnectionStringName = "Conveyor";

    /// <summary>
    /// Registers <see cref="ConveyorDbContext"/> (scoped, one per message or request) and its
    /// factory (for short writes outside that scope, such as job status updates).
    /// </summary>
    public static IServiceCollection AddConveyorStorage(this IServiceCollection services, IConfiguration configuration)
    {
        var connectionString = configuration.GetConnectionString(ConnectionStringName)
            ?? throw new InvalidOperationException(
                $"ConnectionStrings:{ConnectionStringName} (env ConnectionStrings__{ConnectionStringName}) is not set.");

        services.AddDbContextFactory<ConveyorDbContext>(options => Configure(options, connectionString));
        return services;
    }

    public static void Configure(DbContextOptionsBuilder options, string connectionString) =>
        options
            .UseNpgsql(connectionString, npgsql => npgsql.MigrationsHistoryTable("__ef_migrations_history"))
            .UseSnakeCaseNamingConvention();
}
