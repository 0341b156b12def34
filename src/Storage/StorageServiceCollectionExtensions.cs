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

        if (string.IsNullOrWhiteSpace(parsed.Host))
        {
            throw new InvalidOperationException($"{setting} names no Host.");
        }

        // Npgsql takes a pool of none, and then every open waits out its Timeout for a connection that never comes.
        if (parsed is { Pooling: true, MaxPoolSize: 0 })
        {
            throw new InvalidOperationException($"{setting} is not a valid Npgsql connection string: Maximum Pool Size is 0, so no connection could ever be opened.");
        }

        try
        {
            // Npgsql checks keywords against each other (Minimum Pool Size above Maximum Pool Size, a maximum of 0) only
            // when a data source is built, which the first connection does: without this, such a string passed the start
            // and every connection failed, the worker and the Api running unready for good. Building one opens nothing.
            using var dataSource = new Npgsql.NpgsqlDataSourceBuilder(connectionString).Build();
        }
        catch (Exception invalid) when (invalid is ArgumentException or FormatException or NotSupportedException)
        {
            throw new InvalidOperationException($"{setting} is not a valid Npgsql connection string: {invalid.Message}", invalid);
        }

        return connectionString;
    }

    public static void Configure(DbContextOptionsBuilder options, string connectionString) =>
        options
            .UseNpgsql(ForContexts(connectionString), NpgsqlSettings)
            .UseSnakeCaseNamingConvention();

    /// <summary>
    /// Options for a context on a connection its caller opened and closes (one whose session must end with
    /// the work, not go back to a pool); <paramref name="connection"/>'s string should come from <see cref="ForContexts"/>.
    /// </summary>
    public static DbContextOptions<ConveyorDbContext> On(Npgsql.NpgsqlConnection connection) =>
        new DbContextOptionsBuilder<ConveyorDbContext>()
            .UseNpgsql(connection, NpgsqlSettings)
            .UseSnakeCaseNamingConvention()
            .Options;

    private static void NpgsqlSettings(Npgsql.EntityFrameworkCore.PostgreSQL.Infrastructure.NpgsqlDbContextOptionsBuilder npgsql) =>
        npgsql.MigrationsHistoryTable("__ef_migrations_history");

    /// <summary>
    /// The connection string EF contexts (and the Api's job-row batches) use, unless it says otherwise
    /// itself: their hot statements (the inbox claim, the batch apply, job inserts) are prepared once
    /// per connection instead of parsed on every call (still planned on every call, see below), and a
    /// connection taken from the pool is not reset first (the reset is a statement of its own, parsed
    /// every time, and these users keep no session state: no temporary tables, session settings or
    /// session-level locks); the server stops a statement at <see cref="StatementTimeoutSeconds"/>,
    /// before the client gives up at <see cref="CommandTimeoutSeconds"/>. Code that does keep session state opens its own, unpooled connections:
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

        // Server settings, each unless the string's Options names it: prepared, but planned on every
        // execution, since a generic plan made while a table was small (a new deployment, a truncated
        // table) would keep scanning it sequentially as it grows (preparing still saves the parse and
        // analysis); and a statement limit the server enforces (StatementTimeoutSeconds).
        var options = Sets("Options") ? builder.Options ?? string.Empty : string.Empty;
        var named = ServerSettingsNamed(options);
        foreach (var (name, value) in new[] { ("plan_cache_mode", "force_custom_plan"), ("statement_timeout", $"{StatementTimeoutSeconds}s") })
        {
            if (!named.Contains(name))
            {
                options = $"{options} -c {name}={value}".Trim();
            }
        }

        builder.Options = options;
        if (!Sets("Command Timeout"))
        {
            builder.CommandTimeout = CommandTimeoutSeconds;
        }

        return builder.ConnectionString;
    }

    /// <summary>
    /// The names of the server settings a connection string's <c>Options</c> set, as PostgreSQL reads them: the options
    /// split into words at whitespace (a backslash keeps the character after it in the word), each setting given as
    /// <c>-c name=value</c>, <c>-cname=value</c> or <c>--name=value</c>, its name in any casing and with dashes for
    /// underscores (<c>--statement-timeout=5000</c> is <c>statement_timeout</c>). Returned lower-cased, with underscores.
    /// Looked for as a substring, a name was missed in its dashed form, and ours, added after it, overrode the
    /// operator's value; and a value that only mentioned it (<c>-c application_name=statement_timeout_probe</c>) left
    /// the server with no statement limit at all.
    /// </summary>
    private static HashSet<string> ServerSettingsNamed(string options)
    {
        var words = new List<string>();
        var word = new System.Text.StringBuilder();
        var escaped = false;
        foreach (var character in options)
        {
            if (!escaped && character == '\\')
            {
                escaped = true;
            }
            else if (!escaped && char.IsWhiteSpace(character))
            {
                if (word.Length > 0)
                {
                    words.Add(word.ToString());
                    word.Clear();
                }
            }
            else
            {
                escaped = false;
                word.Append(character);
            }
        }

        if (word.Length > 0)
        {
            words.Add(word.ToString());
        }

        var named = new HashSet<string>(StringComparer.Ordinal);
        for (var i = 0; i < words.Count; i++)
        {
            var setting = words[i] switch
            {
                "-c" => ++i < words.Count ? words[i] : null,
                var dashed when dashed.StartsWith("--", StringComparison.Ordinal) => dashed[2..],
                var joined when joined.StartsWith("-c", StringComparison.Ordinal) => joined[2..],
                _ => null,
            };
            if (setting is not null)
            {
                var end = setting.IndexOf('=', StringComparison.Ordinal);
                named.Add((end < 0 ? setting : setting[..end]).Replace('-', '_').ToLowerInvariant());
            }
        }

        return named;
    }

    /// <summary>
    /// The server stops a statement that runs longer (<c>statement_timeout</c>, SQL state 57014): a
    /// query that is too slow fails as a statement, which a job's retry budget covers and which ends
    /// in its <c>_error</c> queue if it is always too slow (<see cref="DatabaseFailures"/>).
    /// </summary>
    public const int StatementTimeoutSeconds = 30;

    /// <summary>
    /// The client waits longer than <see cref="StatementTimeoutSeconds"/> before it gives up on a
    /// statement (Npgsql's <c>Command Timeout</c>, 30 s by default). Npgsql reports its own timeout as a
    /// read that failed, which says nothing about the statement, so it is taken for an unavailable
    /// database and waited out without spending a budget: with the client's limit first, a query that
    /// is always too slow was requeued for ever. Now the client's limit is reached only when the server
    /// does not answer even the cancellation.
    /// </summary>
    public const int CommandTimeoutSeconds = StatementTimeoutSeconds + 15;

    /// <summary>
    /// For schema changes (<c>migrate</c>): no statement limit on either side, since an index built
    /// <c>CONCURRENTLY</c> on a large table takes as long as it takes; stopped at a limit, it would
    /// leave an invalid index and start over on every run.
    /// </summary>
    public static async Task WithoutStatementLimitsAsync(DbContext db, CancellationToken cancellationToken = default)
    {
        db.Database.SetCommandTimeout(TimeSpan.Zero);
        await db.Database.OpenConnectionAsync(cancellationToken);
        await db.Database.ExecuteSqlRawAsync("SET statement_timeout = 0", cancellationToken);
    }
}
