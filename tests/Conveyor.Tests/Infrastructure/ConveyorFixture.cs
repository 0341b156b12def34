using Conveyor.Api;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Worker;
using Microsoft.AspNetCore.Builder;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// One database and one RabbitMQ vhost per collection of tests (so per lane, see <see cref="ConveyorCollection"/>),
/// made here and removed at the end, so tests never touch the data of a running dev service or of another
/// lane. Hosts the Api and Worker in-process.
/// </summary>
public sealed class ConveyorFixture : IAsyncLifetime
{
    private readonly string _runId = Guid.NewGuid().ToString("N")[..10];
    private ServerSettings _servers = null!;
    private string _adminConnectionString = null!;

    public string DatabaseName => $"conveyor_test_{_runId}";

    public string VirtualHost => $"conveyor-test-{_runId}";

    public string ConnectionString { get; private set; } = null!;

    public RabbitManagement Rabbit { get; private set; } = null!;

    public ServerSettings Servers => _servers;

    /// <summary>The settings every hosted Api and Worker gets: this run's database and vhost.</summary>
    public IReadOnlyDictionary<string, string?> BaseSettings { get; private set; } = new Dictionary<string, string?>();

    public async Task InitializeAsync()
    {
        _servers = await ServerSettings.ResolveAsync();
        _adminConnectionString = _servers.PostgresConnectionString;
        var builder = new NpgsqlConnectionStringBuilder(_adminConnectionString) { Database = DatabaseName, MaxPoolSize = 100 };
        ConnectionString = builder.ConnectionString;

        await using (var admin = new NpgsqlConnection(_adminConnectionString))
        {
            await admin.OpenAsync();
            await using var create = new NpgsqlCommand($"CREATE DATABASE \"{DatabaseName}\"", admin) { CommandTimeout = DatabaseDrop.StatementTimeoutSeconds };
            await create.ExecuteNonQueryAsync();
        }

        await using (var db = CreateDbContext())
        {
            await db.Database.MigrateAsync();
        }

        Rabbit = new RabbitManagement(RabbitOptions());
        await Rabbit.CreateVhostAsync(VirtualHost, _servers.RabbitUser);

        BaseSettings = new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = ConnectionString,
            ["RabbitMq:Host"] = _servers.RabbitHost,
            ["RabbitMq:Port"] = _servers.RabbitPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["RabbitMq:ManagementPort"] = _servers.RabbitManagementPort.ToString(System.Globalization.CultureInfo.InvariantCulture),
            ["RabbitMq:VirtualHost"] = VirtualHost,
            ["RabbitMq:Username"] = _servers.RabbitUser,
            ["RabbitMq:Password"] = _servers.RabbitPassword,
            ["Logging:LogLevel:Default"] = "Warning",
            ["Logging:LogLevel:MassTransit"] = "Warning",
            ["Logging:LogLevel:Microsoft.Extensions.Diagnostics.HealthChecks"] = "None",
        };

        // The job queues and their bindings, as a deployment has them once a worker has started: the
        // Api publishes mandatory, so without them it refuses every submission (503), whichever test
        // happens to run first.
        await using (await StartWorkerAsync())
        {
        }
    }

    /// <summary>
    /// A vhost of its own (this run's name plus <paramref name="suffix"/>), for a test whose queues must
    /// be declared otherwise than the run's; deleted when disposed, after a failure too.
    /// </summary>
    public async Task<ScratchVhost> ScratchVhostAsync(string suffix)
    {
        var name = $"{VirtualHost}-{suffix}";
        await Rabbit.CreateVhostAsync(name, _servers.RabbitUser);
        return new ScratchVhost(name, Rabbit);
    }

    /// <summary>A plain AMQP connection factory for this run's vhost (or <paramref name="virtualHost"/>), for tests that talk to the broker directly.</summary>
    public RabbitMQ.Client.ConnectionFactory AmqpFactory(string? virtualHost = null) => new()
    {
        HostName = _servers.RabbitHost,
        Port = _servers.RabbitPort,
        VirtualHost = virtualHost ?? VirtualHost,
        UserName = _servers.RabbitUser,
        Password = _servers.RabbitPassword,
    };

    /// <summary>This run's broker and vhost as the services' options, for components a test builds itself.</summary>
    public RabbitMqOptions RabbitOptions() => new()
    {
        Host = _servers.RabbitHost,
        Port = _servers.RabbitPort,
        ManagementPort = _servers.RabbitManagementPort,
        Username = _servers.RabbitUser,
        Password = _servers.RabbitPassword,
        VirtualHost = VirtualHost,
        ConnectTimeoutSeconds = 30,
    };

    public ConveyorDbContext CreateDbContext()
    {
        var options = new DbContextOptionsBuilder<ConveyorDbContext>();
        StorageServiceCollectionExtensions.Configure(options, ConnectionString);
        return new ConveyorDbContext(options.Options);
    }

    /// <summary><see cref="CreateDbContext"/> as a factory, for components a test builds itself.</summary>
    public IDbContextFactory<ConveyorDbContext> DbContextFactory() => new Contexts(this);

    /// <summary>Starts an Api that accepts <see cref="TestKeys"/> (and any keys in <paramref name="overrides"/>); its client sends the admin key.</summary>
    public Task<RunningApp> StartApiAsync(IDictionary<string, string?>? overrides = null, Action<WebApplicationBuilder>? configure = null)
    {
        var settings = new Dictionary<string, string?>(TestKeys.Settings);
        foreach (var (key, value) in overrides ?? new Dictionary<string, string?>())
        {
            settings[key] = value;
        }

        return RunningApp.StartAsync(args => ApiApp.Build(args, configure), Merge(settings), TestKeys.Admin);
    }

    /// <summary>
    /// Starts a worker and waits until its bus is connected and its queues exist. It counts the
    /// messages it is handling (<see cref="InFlightMessages"/>, in its services).
    /// </summary>
    public async Task<RunningApp> StartWorkerAsync(IDictionary<string, string?>? overrides = null, Action<WebApplicationBuilder>? configure = null)
    {
        var settings = Merge(overrides);
        // No signing secret ships with the worker; a test that gives none gets the tests' own.
        settings.TryAdd("Webhooks:SigningSecret", WorkerSettings.SigningSecret);

        var worker = await RunningApp.StartAsync(args => WorkerApp.Build(args, builder =>
        {
            builder.Services.AddSingleton<InFlightMessages>();
            builder.Services.AddReceiveObserver(services => services.GetRequiredService<InFlightMessages>());
            configure?.Invoke(builder);
        }), settings);
        try
        {
            await worker.WaitUntilReadyAsync();
        }
        catch
        {
            // A worker that never got ready may still connect later: left running, it would take messages
            // from the next tests' queues.
            await worker.DisposeAsync();
            throw;
        }

        return worker;
    }

    /// <summary>
    /// Empties every table and queue of this run. Fails when an earlier test left a connection open
    /// in this run's vhost (a host or bus it never stopped would take this test's messages), naming it.
    /// </summary>
    public async Task ResetAsync()
    {
        await CloseLeftoverConnectionsAsync();
        await using (var db = CreateDbContext())
        {
            // Every table but the migrations history, so tables added later are reset too.
            await db.Database.ExecuteSqlRawAsync("""
                DO $$ DECLARE tables text; BEGIN
                  SELECT string_agg(format('%I', tablename), ', ') INTO tables FROM pg_tables
                   WHERE schemaname = 'public' AND tablename <> '__ef_migrations_history';
                  IF tables IS NOT NULL THEN EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY'; END IF;
                END $$
                """);
        }

        foreach (var queue in await Rabbit.QueuesAsync(VirtualHost))
        {
            await Rabbit.PurgeAsync(VirtualHost, queue.Name);
        }
    }

    /// <summary>
    /// A test calls <see cref="ResetAsync"/> before it starts anything, so any connection open in the
    /// run's vhost then belongs to an earlier test (its hosts name their connections after it, see
    /// <see cref="CallingTest"/>). A stopped host may take a moment to close them; one still open
    /// after that is closed, and this test fails naming it, instead of failing later for no visible reason.
    /// </summary>
    private async Task CloseLeftoverConnectionsAsync()
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        var open = await Rabbit.ConnectionsAsync(VirtualHost);
        while (open.Count > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(250);
            open = await Rabbit.ConnectionsAsync(VirtualHost);
        }

        if (open.Count == 0)
        {
            return;
        }

        foreach (var (name, _) in open)
        {
            await Rabbit.CloseConnectionAsync(name, "left open by an earlier test");
        }

        throw new InvalidOperationException(
            $"An earlier test left {open.Count} connection(s) open in this run's vhost (closed now): "
            + string.Join("; ", open.Select(c => c.ClientName ?? c.Name)));
    }

    private Dictionary<string, string?> Merge(IDictionary<string, string?>? overrides)
    {
        var settings = new Dictionary<string, string?>(BaseSettings);
        foreach (var (key, value) in overrides ?? new Dictionary<string, string?>())
        {
            settings[key] = value;
        }

        return settings;
    }

    public async Task DisposeAsync()
    {
        await Rabbit.DeleteVhostAsync(VirtualHost);
        Rabbit.Dispose();
        // Only this fixture's pool: other lanes' connections stay. The drop ends the hosts' own.
        using (var own = new NpgsqlConnection(ConnectionString))
        {
            NpgsqlConnection.ClearPool(own);
        }

        await DatabaseDrop.ForceAsync(_adminConnectionString, DatabaseName);
        await _servers.DisposeAsync();
    }

    private sealed class Contexts(ConveyorFixture fixture) : IDbContextFactory<ConveyorDbContext>
    {
        public ConveyorDbContext CreateDbContext() => fixture.CreateDbContext();
    }
}
