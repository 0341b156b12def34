using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Api.Operations;

/// <summary>
/// One piece of error-queue work per queue at a time, across every Api replica: a PostgreSQL
/// session-level advisory lock keyed by vhost and queue, held on a connection of its own for as long
/// as the work runs. If the process dies, its connection closes and PostgreSQL releases the lock. If
/// its machine vanishes (power lost, partitioned off), nothing closes the connection: the session asks
/// the server to probe it within seconds (TCP keepalives, a user timeout), so the lock is released
/// within about a minute instead of after the kernel's default two hours of keepalive.
/// </summary>
public sealed class QueueLocks(IConfiguration configuration, IOptions<RabbitMqOptions> broker)
{
    /// <summary>First half of every lock key, so these locks cannot collide with other advisory locks.</summary>
    private const int LockClass = 0x43_51_4F_50; // "CQOP"

    /// <summary>The server's settings for a lock's session: idle 15 s, then a probe every 5 s, 3 unanswered end it; unacknowledged data 30 s.</summary>
    private const string DeadPeerSettings =
        "-c tcp_keepalives_idle=15 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 -c tcp_user_timeout=30000";

    private readonly string _connectionString = LockConnectionString(StorageServiceCollectionExtensions.ConnectionString(configuration));

    /// <summary>The store's connection string, for sessions that hold a lock.</summary>
    private static string LockConnectionString(string connectionString)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString)
        {
            // Closing the connection must end the session (and release the lock), not park it in a pool.
            Pooling = false,
            ApplicationName = "conveyor-api-queue-lock",
        };
        builder.Options = string.IsNullOrWhiteSpace(builder.Options) ? DeadPeerSettings : $"{builder.Options} {DeadPeerSettings}";
        return builder.ConnectionString;
    }

    /// <summary>The lock, or null when someone else holds it.</summary>
    public async Task<QueueLease?> TryAcquireAsync(string queue, CancellationToken cancellationToken)
    {
        var connection = new NpgsqlConnection(_connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            await using var command = new NpgsqlCommand("SELECT pg_try_advisory_lock(@class, @key)", connection);
            command.Parameters.AddWithValue("class", LockClass);
            command.Parameters.AddWithValue("key", KeyOf(queue));
            if (await command.ExecuteScalarAsync(cancellationToken) is true)
            {
                return new QueueLease(connection, LockClass, KeyOf(queue));
            }
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }

        await connection.DisposeAsync();
        return null;
    }

    private int KeyOf(string queue) =>
        BinaryPrimitives.ReadInt32BigEndian(SHA256.HashData(Encoding.UTF8.GetBytes($"{broker.Value.VirtualHost}\n{queue}")));
}

/// <summary>A held queue lock and the connection that holds it; progress is written through it, so losing it is noticed.</summary>
public sealed class QueueLease(NpgsqlConnection connection, int lockClass, int key) : IAsyncDisposable
{
    public NpgsqlConnection Connection { get; } = connection;

    public async ValueTask DisposeAsync()
    {
        try
        {
            await using var command = new NpgsqlCommand("SELECT pg_advisory_unlock(@class, @key)", Connection);
            command.Parameters.AddWithValue("class", lockClass);
            command.Parameters.AddWithValue("key", key);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await command.ExecuteScalarAsync(timeout.Token);
        }
        catch (Exception exception) when (exception is NpgsqlException or OperationCanceledException or InvalidOperationException)
        {
            // Closing the (unpooled) connection below ends the session and its locks anyway.
        }

        await Connection.DisposeAsync();
    }
}
