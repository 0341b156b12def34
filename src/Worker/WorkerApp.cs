using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Worker.Hosting;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Messaging;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Infrastructure;
using Microsoft.EntityFrameworkCore.Migrations;

namespace Conveyor.Worker;

/// <summary>The worker host: consumers on RabbitMQ, health endpoints on a small side port.</summary>
public static partial class WorkerApp
{
    /// <summary><c>migrate</c> applies the database migrations and exits; anything else runs the worker.</summary>
    public static async Task<int> RunAsync(string[] args)
    {
        if (args is ["migrate", .. var rest])
        {
            return await MigrateAsync(rest);
        }

        await using var app = Build(args);
        await app.RunAsync();
        return 0;
    }

    /// <param name="configure">Lets tests add to the host before it is built (an in-memory exporter, say).</param>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        // The slim builder: the worker serves plain-HTTP health and metrics only, so it leaves out
        // Kestrel's HTTPS and HTTP/3 (QUIC), IIS integration and regex route constraints, whose
        // assemblies cost ~2.5 MiB of the worker's peak memory (bench/analysis.md §5). Configuration
        // is read as before (appsettings.json, the environment, the command line); of the logging
        // providers it keeps the console, and the EventSource one is added back so dotnet-trace and
        // dotnet-monitor still collect logs.
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = args,
            ApplicationName = typeof(WorkerApp).Assembly.GetName().Name,
            // appsettings.json sits beside the assembly: found whatever the working directory.
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.AddEventSourceLogger();
        builder.AddConveyorTelemetry("conveyor-worker", JobMetrics.MeterName);
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddConveyorStorage(builder.Configuration);
        builder.Services.AddWorkerIntegrations(builder.Configuration);
        builder.Services.AddWorkerMessaging(builder.Configuration);
        builder.Services.AddOrderedShutdown(builder.Configuration);
        builder.Services.AddHostedService<DatabaseContact>();
        builder.Services.AddConveyorHealthChecks();
        configure?.Invoke(builder);

        var app = builder.Build();
        app.MapConveyorHealthEndpoints();
        app.MapConveyorMetrics();
        return app;
    }

    public static async Task<int> MigrateAsync(string[] args)
    {
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings
        {
            Args = args,
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Services.AddConveyorStorage(builder.Configuration);
        using var host = builder.Build();
        var logger = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Conveyor.Migrate");
        await using var db = await host.Services.GetRequiredService<IDbContextFactory<ConveyorDbContext>>().CreateDbContextAsync();
        await StorageServiceCollectionExtensions.WithoutStatementLimitsAsync(db);
        // On a new database EF Core reads the history table before it creates it, and logs the
        // failed read at Error level (dotnet/efcore#37328); created first, nothing fails.
        await db.GetService<IHistoryRepository>().CreateIfNotExistsAsync();
        var pending = (await db.Database.GetPendingMigrationsAsync()).ToList();
        await db.Database.MigrateAsync();
        var names = string.Join(", ", pending);
        LogMigrated(logger, pending.Count, names);
        return 0;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Applied {Count} migration(s): {Migrations}")]
    private static partial void LogMigrated(ILogger logger, int count, string migrations);
}
