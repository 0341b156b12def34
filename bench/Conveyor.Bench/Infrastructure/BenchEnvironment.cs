using System.ComponentModel.DataAnnotations;
using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using RabbitMQ.Client;

namespace Conveyor.Bench.Infrastructure;

/// <summary>
/// The servers from <c>scripts/services.sh env</c>, and one database plus one RabbitMQ vhost per
/// benchmark run, made at the start and removed at the end, so a run never touches dev data.
/// </summary>
public sealed class BenchEnvironment : IAsyncDisposable
{
    private readonly string _adminConnectionString;
    private readonly HttpClient _management;

    private BenchEnvironment(string adminConnectionString, string runId)
    {
        _adminConnectionString = adminConnectionString;
        RabbitHost = Setting("RabbitMq__Host", "127.0.0.1");
        RabbitPort = int.Parse(Setting("RabbitMq__Port", "5672"), CultureInfo.InvariantCulture);
        RabbitManagementPort = int.Parse(Setting("RabbitMq__ManagementPort", "15672"), CultureInfo.InvariantCulture);
        RabbitManagementUrl = Environment.GetEnvironmentVariable("RabbitMq__ManagementUrl") is { Length: > 0 } url ? url : null;
        RabbitUser = Setting("RabbitMq__Username", "guest");
        RabbitPassword = Setting("RabbitMq__Password", "guest");
        DatabaseName = $"conveyor_bench_{runId}";
        VirtualHost = $"conveyor-bench-{runId}";
        // The services' own address rules (TLS, a path prefix, an IPv6 host), and their refusal of a bad URL before anything is created.
        var broker = new RabbitMqOptions { Host = RabbitHost, ManagementPort = RabbitManagementPort, ManagementUrl = RabbitManagementUrl };
        Validator.ValidateObject(broker, new ValidationContext(broker), validateAllProperties: true);
        _management = new HttpClient
        {
            BaseAddress = broker.ManagementApiAddress(),
            Timeout = TimeSpan.FromSeconds(30),
        };
        _management.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue(
            "Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{RabbitUser}:{RabbitPassword}")));
    }

    public string RabbitHost { get; }

    public int RabbitPort { get; }

    public int RabbitManagementPort { get; }

    /// <summary><c>RabbitMq__ManagementUrl</c>, as the services read it (<see cref="RabbitMqOptions.ManagementUrl"/>); null: <see cref="RabbitHost"/> and <see cref="RabbitManagementPort"/>.</summary>
    public string? RabbitManagementUrl { get; }

    public string RabbitUser { get; }

    public string RabbitPassword { get; }

    public string DatabaseName { get; }

    public string VirtualHost { get; }

    public static async Task<BenchEnvironment> CreateAsync()
    {
        var admin = Environment.GetEnvironmentVariable("ConnectionStrings__Conveyor")
            ?? throw new InvalidOperationException("ConnectionStrings__Conveyor is not set: eval \"$(scripts/services.sh env)\" first.");
        var environment = new BenchEnvironment(admin, Guid.NewGuid().ToString("N")[..8]);
        await environment.CreateServersAsync();
        return environment;
    }

    /// <summary>This run's database; the pool size is what the worker's connection string would carry.</summary>
    public string ConnectionString(int maxPoolSize = 100)
    {
        var builder = new NpgsqlConnectionStringBuilder(_adminConnectionString) { Database = DatabaseName, MaxPoolSize = maxPoolSize };
        // Experiments with connection-string knobs (e.g. "Max Auto Prepare=20") need no code change.
        if (Environment.GetEnvironmentVariable("CONVEYOR_BENCH_PG_OPTIONS") is { Length: > 0 } extra)
        {
            builder.ConnectionString += ";" + extra;
        }

        return builder.ConnectionString;
    }

    /// <summary>
    /// Job queues as quorum queues, as the prod overlay declares them (<c>RabbitMq__QuorumQueues</c>),
    /// when <c>CONVEYOR_BENCH_QUORUM=1</c>; classic otherwise, as <c>scripts/services.sh</c>' broker runs.
    /// </summary>
    public static bool QuorumQueues { get; } = Environment.GetEnvironmentVariable("CONVEYOR_BENCH_QUORUM") == "1";

    /// <summary>
    /// Classic job queues in lazy mode, the worker's default (<c>RabbitMq:LazyQueues</c>);
    /// <c>CONVEYOR_BENCH_LAZY=0</c> measures them in the broker's default mode instead.
    /// </summary>
    public static bool LazyQueues { get; } = Environment.GetEnvironmentVariable("CONVEYOR_BENCH_LAZY") != "0";

    /// <summary>How the job queue is declared, for the reports.</summary>
    public static string QueueDescription => QuorumQueues ? "a quorum queue (CONVEYOR_BENCH_QUORUM=1)"
        : LazyQueues ? "a classic queue in lazy mode (x-queue-mode=lazy, the worker's default RabbitMq:LazyQueues)"
        : "a classic queue in the broker's default mode (CONVEYOR_BENCH_LAZY=0)";

    /// <summary>The broker settings every variant's job queue is declared with.</summary>
    public static RabbitMqOptions QueueSettings { get; } = new() { QuorumQueues = QuorumQueues, LazyQueues = LazyQueues };

    /// <summary>What every hosted worker and Api gets: this run's database and vhost, quiet logs.</summary>
    public Dictionary<string, string?> BaseSettings(int maxPoolSize = 100) => new()
    {
        ["RabbitMq:QuorumQueues"] = QuorumQueues ? "true" : "false",
        ["RabbitMq:LazyQueues"] = LazyQueues ? "true" : "false",
        ["ConnectionStrings:Conveyor"] = ConnectionString(maxPoolSize),
        ["RabbitMq:Host"] = RabbitHost,
        ["RabbitMq:Port"] = RabbitPort.ToString(CultureInfo.InvariantCulture),
        ["RabbitMq:ManagementPort"] = RabbitManagementPort.ToString(CultureInfo.InvariantCulture),
        ["RabbitMq:ManagementUrl"] = RabbitManagementUrl,
        ["RabbitMq:VirtualHost"] = VirtualHost,
        ["RabbitMq:Username"] = RabbitUser,
        ["RabbitMq:Password"] = RabbitPassword,
        ["Logging:LogLevel:Default"] = "Warning",
        ["Logging:LogLevel:MassTransit"] = "Warning",
        ["Logging:LogLevel:Microsoft.Extensions.Diagnostics.HealthChecks"] = "None",
        ["urls"] = "http://127.0.0.1:0",
    };

    public static string[] Args(IReadOnlyDictionary<string, string?> settings) =>
        [.. settings.Where(s => s.Value is not null).Select(s => $"--{s.Key}={s.Value}")];

    public ConnectionFactory AmqpFactory() => new()
    {
        HostName = RabbitHost,
        Port = RabbitPort,
        VirtualHost = VirtualHost,
        UserName = RabbitUser,
        Password = RabbitPassword,
    };

    public ConveyorDbContext CreateDbContext()
    {
        var options = new DbContextOptionsBuilder<ConveyorDbContext>();
        StorageServiceCollectionExtensions.Configure(options, ConnectionString());
        return new ConveyorDbContext(options.Options);
    }

    /// <summary>Empties every table but the migrations history.</summary>
    public async Task TruncateAsync()
    {
        await using var db = CreateDbContext();
        await db.Database.ExecuteSqlRawAsync("""
            DO $$ DECLARE tables text; BEGIN
              SELECT string_agg(format('%I', tablename), ', ') INTO tables FROM pg_tables
               WHERE schemaname = 'public' AND tablename <> '__ef_migrations_history';
              IF tables IS NOT NULL THEN EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY'; END IF;
            END $$
            """);
    }

    public async Task<long> ScalarAsync(string sql)
    {
        await using var connection = new NpgsqlConnection(ConnectionString());
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        return Convert.ToInt64(await command.ExecuteScalarAsync(), CultureInfo.InvariantCulture);
    }

    /// <summary>Ready messages and consumers of a queue, from a passive declare (no stats delay).</summary>
    public async Task<(uint Messages, uint Consumers)> QueueStateAsync(string queue)
    {
        await using var connection = await AmqpFactory().CreateConnectionAsync("conveyor-bench-probe");
        await using var channel = await connection.CreateChannelAsync();
        var state = await channel.QueueDeclarePassiveAsync(queue);
        return (state.MessageCount, state.ConsumerCount);
    }

    /// <summary>
    /// The worker's ChargePayment topology as MassTransit declares it (message-type exchange →
    /// endpoint exchange → queue), so messages published before a worker starts are routed and kept.
    /// </summary>
    public async Task DeclareChargePaymentQueueAsync()
    {
        const string queue = "charge-payment";
        const string exchange = "Conveyor.Contracts.Payments:ChargePayment";
        await using var connection = await AmqpFactory().CreateConnectionAsync("conveyor-bench-declare");
        await using var channel = await connection.CreateChannelAsync();
        await channel.ExchangeDeclareAsync(exchange, "fanout", durable: true, autoDelete: false);
        await channel.ExchangeDeclareAsync(queue, "fanout", durable: true, autoDelete: false);
        await channel.ExchangeBindAsync(queue, exchange, string.Empty);
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, QueueSettings.JobQueueArguments(queue));
        await channel.QueueBindAsync(queue, queue, string.Empty);
    }

    public async Task PurgeAsync(params string[] queues)
    {
        await using var connection = await AmqpFactory().CreateConnectionAsync("conveyor-bench-purge");
        await using var channel = await connection.CreateChannelAsync();
        foreach (var queue in queues)
        {
            await channel.QueuePurgeAsync(queue);
        }
    }

    public async Task<string> ServerVersionsAsync()
    {
        var overview = await _management.GetFromJsonAsync<System.Text.Json.JsonElement>("overview");
        var rabbit = overview.GetProperty("rabbitmq_version").GetString();
        var erlang = overview.GetProperty("erlang_version").GetString();
        await using var connection = new NpgsqlConnection(ConnectionString());
        await connection.OpenAsync();
        await using var version = new NpgsqlCommand("SELECT current_setting('server_version') || ', synchronous_commit=' || current_setting('synchronous_commit')", connection);
        var postgres = (string?)await version.ExecuteScalarAsync();
        return $"RabbitMQ {rabbit} (Erlang {erlang}), PostgreSQL {postgres}";
    }

    private async Task CreateServersAsync()
    {
        await using (var admin = new NpgsqlConnection(_adminConnectionString))
        {
            await admin.OpenAsync();
            await using var create = new NpgsqlCommand($"CREATE DATABASE \"{DatabaseName}\"", admin);
            await create.ExecuteNonQueryAsync();
        }

        await using (var db = CreateDbContext())
        {
            await db.Database.MigrateAsync();
        }

        (await _management.PutAsync($"vhosts/{Uri.EscapeDataString(VirtualHost)}", null)).EnsureSuccessStatusCode();
        (await _management.PutAsJsonAsync($"permissions/{Uri.EscapeDataString(VirtualHost)}/{Uri.EscapeDataString(RabbitUser)}",
            new { configure = ".*", write = ".*", read = ".*" })).EnsureSuccessStatusCode();
    }

    private static string Setting(string name, string fallback) =>
        Environment.GetEnvironmentVariable(name) is { Length: > 0 } value ? value : fallback;

    public async ValueTask DisposeAsync()
    {
        await _management.DeleteAsync($"vhosts/{Uri.EscapeDataString(VirtualHost)}");
        _management.Dispose();
        NpgsqlConnection.ClearAllPools();
        await using var admin = new NpgsqlConnection(_adminConnectionString);
        await admin.OpenAsync();
        await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{DatabaseName}\" WITH (FORCE)", admin);
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await drop.ExecuteNonQueryAsync();
                return;
            }
            catch (PostgresException exception) when (exception.SqlState == PostgresErrorCodes.InsufficientPrivilege)
            {
                // Another role's session (a superuser's psql, say) is in the database; it goes away soon.
                if (attempt == 10)
                {
                    await Console.Error.WriteLineAsync($"could not drop {DatabaseName}: {exception.MessageText}");
                    return;
                }

                await Task.Delay(TimeSpan.FromSeconds(1));
            }
        }
    }
}
