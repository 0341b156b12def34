using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Conveyor.Api.Hosting;
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

    private readonly string _connectionString =
        LockSessions.ConnectionString(StorageServiceCollectionExtensions.ConnectionString(configuration), "conveyor-api-queue-lock");

    /// <summary>The lock, or null when someone else holds it.</summary>
    public Task<QueueLease?> TryAcquireAsync(string queue, CancellationToken cancellationToken) =>
        AcquireAsync(queue, _ => Task.FromResult(false), cancellationToken);

    /// <summary>
    /// The lock, tried on one session until it is free or <paramref name="tryAgain"/> (called after each
    /// refusal, and free to wait before it answers) says to give up; null then. A refused try takes nothing,
    /// so the session can try again: a wait costs one connection, not one (unpooled) per try. A try waits at
    /// most <see cref="QueueLease.CheckTimeout"/> (then a <see cref="NpgsqlException"/>: the database is
    /// unavailable) and stops waiting when <paramref name="cancellationToken"/> is cancelled, without Npgsql's
    /// cancellation (<see cref="QueueLease.RunAsync"/>); either way the session is closed, so a try still under
    /// way cannot leave the lock taken.
    /// </summary>
    public async Task<QueueLease?> AcquireAsync(string queue, Func<CancellationToken, Task<bool>> tryAgain, CancellationToken cancellationToken)
    {
        var connection = new NpgsqlConnection(_connectionString);
        try
        {
            await connection.OpenAsync(cancellationToken);
            await using var command = new NpgsqlCommand("SELECT pg_try_advisory_lock(@class, @key)", connection);
            command.Parameters.AddWithValue("class", LockClass);
            command.Parameters.AddWithValue("key", KeyOf(queue));
            do
            {
                if (await TryLockAsync(command, queue, cancellationToken))
                {
                    return new QueueLease(connection, LockClass, KeyOf(queue));
                }
            }
            while (await tryAgain(cancellationToken));
        }
        catch
        {
            await HeldSessions.CloseAsync(connection);
            throw;
        }

        await connection.DisposeAsync();
        return null;
    }

    private static async Task<bool> TryLockAsync(NpgsqlCommand command, string queue, CancellationToken cancellationToken) =>
        await QueueLease.RunForRequestAsync(command, $"a try of the lock on '{queue}'", cancellationToken) is true;

    private int KeyOf(string queue) =>
        BinaryPrimitives.ReadInt32BigEndian(SHA256.HashData(Encoding.UTF8.GetBytes($"{broker.Value.VirtualHost}\n{queue}")));
}

/// <summary>
/// A held queue lock and the connection that holds it. An operation writes its progress through it and
/// an inspection watches it (<see cref="WatchAsync"/>), so losing it is noticed.
/// </summary>
public sealed class QueueLease(NpgsqlConnection connection, int lockClass, int key) : IAsyncDisposable
{
    /// <summary>
    /// How long a check of the session may take. The server ends a session it cannot reach after about
    /// 30 s (<see cref="QueueLocks"/>) and releases the lock; a walk whose session has not answered for a
    /// third of that stops well before then. An operation's progress write waits no longer either
    /// (<see cref="OperationRunner"/>).
    /// </summary>
    internal static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(10);

    private static readonly TimeSpan WatchInterval = TimeSpan.FromMilliseconds(500);

    public NpgsqlConnection Connection { get; } = connection;

    /// <summary>
    /// Throws unless the lock's session answers within <see cref="CheckTimeout"/>. A session-level lock
    /// lives exactly as long as its session, and an unpooled connection never opens a new one behind our
    /// back, so an answer means the lock has been held without a break since it was taken.
    /// </summary>
    public async Task CheckAsync()
    {
        await using var command = new NpgsqlCommand("SELECT 1", Connection);
        await RunAsync(command, CheckTimeout);
    }

    /// <summary>
    /// Runs <paramref name="command"/> on the lock's session; throws <see cref="TimeoutException"/> if it has not
    /// answered within <paramref name="timeout"/>. The command gets no cancellation token: Npgsql cancels one by
    /// sending the server a cancel request and waiting, without bound, for the server to close that request's
    /// connection, so a server that stopped answering (a partition, a stalled host) kept the caller waiting for
    /// good, however short its timeout. <paramref name="cancellationToken"/> only stops the wait, as the timeout does. A
    /// command waited for no longer may still run: the caller gives the session up, and disposing the lease (or its
    /// connection) closes it.
    /// </summary>
    internal static async Task<object?> RunAsync(
        NpgsqlCommand command, TimeSpan timeout, TimeProvider? time = null, CancellationToken cancellationToken = default) =>
        await command.ExecuteScalarAsync(CancellationToken.None).WaitAsync(timeout, time ?? TimeProvider.System, cancellationToken);

    /// <summary>
    /// Runs <paramref name="command"/> on the lock's session, as <see cref="RunAsync"/> does, for a request waiting on it
    /// at most <see cref="CheckTimeout"/> (<see cref="HeldSessions.WaitForRequestAsync(Task, TimeSpan, string, CancellationToken)"/>).
    /// </summary>
    internal static Task<object?> RunForRequestAsync(NpgsqlCommand command, string what, CancellationToken cancellationToken) =>
        HeldSessions.WaitForRequestAsync(command.ExecuteScalarAsync(CancellationToken.None), CheckTimeout, what, cancellationToken);

    /// <summary>
    /// For a walk that writes nothing through the lock's connection (an inspection): checks the session
    /// twice a second until <paramref name="until"/>, and cancels <paramref name="lost"/> at the first
    /// check that fails, returning why. Checking also keeps the session from looking idle to the server
    /// (<c>idle_session_timeout</c>). Only one check runs at a time on the connection; the caller must
    /// await this before using the connection again (or disposing the lease).
    /// </summary>
    public async Task<Exception?> WatchAsync(CancellationTokenSource lost, TimeProvider time, CancellationToken until)
    {
        using var timer = new PeriodicTimer(WatchInterval, time);
        try
        {
            while (await timer.WaitForNextTickAsync(until))
            {
                await CheckAsync();
            }
        }
        catch (OperationCanceledException) when (until.IsCancellationRequested)
        {
            // The walk ended; the caller checks once more.
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            await lost.CancelAsync();
            return exception;
        }

        return null;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await using var command = new NpgsqlCommand("SELECT pg_advisory_unlock(@class, @key)", Connection);
            command.Parameters.AddWithValue("class", lockClass);
            command.Parameters.AddWithValue("key", key);
            await RunAsync(command, TimeSpan.FromSeconds(5));
        }
        catch (Exception exception) when (exception is NpgsqlException or TimeoutException or InvalidOperationException)
        {
            // Closing the (unpooled) connection below ends the session and its locks anyway.
        }

        await HeldSessions.CloseAsync(Connection);
    }
}

/// <summary>
/// The session holding a queue's lock was lost (the server restarted, the session was terminated or
/// timed out, the network failed) or stopped answering while work ran under the lock: another walk may
/// have taken the queue meanwhile, so what this one saw cannot be trusted to be the whole queue.
/// </summary>
public sealed class QueueLockLostException(string queue, Exception innerException)
    : Exception($"Lost the database session that holds the lock on '{queue}' while reading it; stopped, since a move or purge could have started on the queue meanwhile. Retry.", innerException)
{
    public string Queue { get; } = queue;
}
