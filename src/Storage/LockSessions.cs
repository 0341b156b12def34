using Npgsql;

namespace Conveyor.Storage;

/// <summary>
/// Connections whose session holds session-level advisory locks (the Api's queue locks, the worker's webhook
/// origin slots). Closing such a connection must end its session, and so release its locks, instead of parking
/// it in a pool. If its machine vanishes (power lost, partitioned off), nothing closes it: the server is asked to
/// probe the peer within seconds (TCP keepalives, a user timeout), so the locks go within about a minute instead
/// of after the kernel's default two hours of keepalive.
/// </summary>
public static class LockSessions
{
    /// <summary>The server's settings for a lock's session: idle 15 s, then a probe every 5 s, 3 unanswered end it; unacknowledged data 30 s.</summary>
    private const string DeadPeerSettings =
        "-c tcp_keepalives_idle=15 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 -c tcp_user_timeout=30000";

    /// <summary><paramref name="connectionString"/> for a lock session: unpooled, named <paramref name="applicationName"/>, dead peers probed.</summary>
    public static string ConnectionString(string connectionString, string applicationName)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString)
        {
            Pooling = false,
            ApplicationName = applicationName,
        };
        builder.Options = string.IsNullOrWhiteSpace(builder.Options) ? DeadPeerSettings : $"{builder.Options} {DeadPeerSettings}";
        return builder.ConnectionString;
    }
}
