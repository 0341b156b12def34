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
        var connectionString = ConnectionString(configuration);
        services.AddPooledDbContextFactory<ConveyorDbContext>(options => Configure(options, connectionString));
        services.AddScoped(provider => provider.GetRequiredService<IDbContextFactory<ConveyorDbContext>>().CreateDbContext());
        return services;
    }

    /// <summary>
    /// The configured <c>ConnectionStrings:Conveyor</c>, as given. Read when the services are
    /// registered, so a value no connection could ever be opened with (unset, empty, malformed, no
    /// host) stops the Api or worker at start, naming the setting, instead of failing every request
    /// and message later as if it were their fault.
    /// </summary>
    public static string ConnectionString(IConfiguration configuration)
    {
        var setting = $"ConnectionStrings:{ConnectionStringName} (env ConnectionStrings__{ConnectionStringName})";
        var connectionString = configuration.GetConnectionString(ConnectionStringName);
        if (string.IsNullOrWhiteSpace(connectionString))
        {
            throw new InvalidOperationException($"{setting} is {(connectionString is null ? "not set" : "empty")}.");
        }

        Npgsql.NpgsqlConnectionStringBuilder parsed;
        try
        {
            parsed = new Npgsql.NpgsqlConnectionStringBuilder(connectionString);
        }
        catch (Exception invalid) when (invalid is ArgumentException or FormatException)
        {
            // The parser's message names the keyword or position, never a value (the password stays out).
            throw new InvalidOperationException($"{setting} is not a valid Npgsql connection string: {invalid.Message}", invalid);
        }

        return string.IsNullOrWhiteSpace(parsed.Host)
            ? throw new InvalidOperationException($"{setting} names no Host.")
            : connectionString;
    }

    public static void Configure(DbContextOptionsBuilder options, string connectionString) =>
        options
            .UseNpgsql(ForContexts(connectionString), npgsql => npgsql.MigrationsHistoryTable("__ef_migrations_history"))
            .UseSnakeCaseNamingConvention();

    /// <summary>
    /// The connection string EF contexts (and the Api's job-row batches) use, unless it says otherwise
    /// itself: their hot statements (the inbox claim, the batch apply, job inserts) are prepared once
    /// per connection instead of parsed on every call (still planned on every call, see below), and a
    /// connection taken from the pool is not reset first (the reset is a statement of its own, parsed
    /// every time, and these users keep no session state: no temporary tables, session settings or
    /// session-level locks). Code that does keep session state opens its own, unpooled connections:
    /// the Api's queue locks (advisory locks) and the redelivery dispatcher's LISTEN.
    /// </summary>
    public static string ForContexts(string connectionString)
    {
        // Which keywords the string itself sets (NpgsqlConnectionStringBuilder.ContainsKey says
        // whether a keyword is known, not whether it is set).
        var given = new System.Data.Common.DbConnectionStringBuilder { ConnectionString = connectionString };
        bool Sets(string keyword) => given.ContainsKey(keyword) || given.ContainsKey(keyword.Replace(" ", "", StringComparison.Ordinal));

        var builder = new Npgsql.NpgsqlConnectionStringBuilder(connectionString);
        if (!Sets("Max Auto Prepare"))
        {
            builder.MaxAutoPrepare = 64;
        }

        if (!Sets("Auto Prepare Min Usages"))
        {
            builder.AutoPrepareMinUsages = 2;
        }

        if (!Sets("No Reset On Close"))
        {
            builder.NoResetOnClose = true;
        }

        if (!Sets("Options"))
        {
            // Prepared, but planned on every execution: a generic plan made while a table was
            // small (a new deployment, a truncated table) would keep scanning it sequentially as
            // it grows. Preparing still saves the parse and analysis.
            builder.Options = "-c plan_cache_mode=force_custom_plan";
        }

        return builder.ConnectionString;
    }
}
