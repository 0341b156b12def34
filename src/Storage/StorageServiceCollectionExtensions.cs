using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Storage;

public static class StorageServiceCollectionExtensions
{
    public const string ConnectionStringName = "Conveyor";

    /// <summary>
    /// Registers <see cref="ConveyorDbContext"/> (scoped, one per message or request) and its
    /// factory (for short writes outside that scope, such as job status updates). Contexts are
    /// pooled: every message and request would otherwise build one from scratch.
    /// </summary>
    public static IServiceCollection AddConveyorStorage(this IServiceCollection services, IConfiguration configuration)
    {
        var connectionString = configuration.GetConnectionString(ConnectionStringName)
            ?? throw new InvalidOperationException(
                $"ConnectionStrings:{ConnectionStringName} (env ConnectionStrings__{ConnectionStringName}) is not set.");

        services.AddPooledDbContextFactory<ConveyorDbContext>(options => Configure(options, connectionString));
        services.AddScoped(provider => provider.GetRequiredService<IDbContextFactory<ConveyorDbContext>>().CreateDbContext());
        return services;
    }

    public static void Configure(DbContextOptionsBuilder options, string connectionString) =>
        options
            .UseNpgsql(connectionString, npgsql => npgsql.MigrationsHistoryTable("__ef_migrations_history"))
            .UseSnakeCaseNamingConvention();
}
