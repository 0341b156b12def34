using Conveyor.ServiceDefaults;
using Npgsql;

namespace Conveyor.Api.Hosting;

/// <summary>
/// Waits of a request on a database session that holds locks (a queue's advisory lock, a cancel's row locks).
/// Npgsql cancels a command whose token is cancelled by sending the server a cancel request and waiting, without
/// bound when the connection string's <c>Timeout</c> is 0, for the server to close that request's connection: while
/// the server does not answer, the session and its locks stay (other work waits behind them) and so does the request.
/// So the session's commands get no token: the request stops waiting for one when it gives up or after a timeout,
/// and then closes the session (<see cref="CloseAsync"/>), which ends it, and what it holds, on the server.
/// </summary>
internal static class HeldSessions
{
    /// <summary>
    /// Waits for <paramref name="running"/>, a command started without a token for Npgsql, until it ends,
    /// <paramref name="timeout"/> passes or <paramref name="cancellationToken"/> is cancelled. A server that does not
    /// answer in time is the database unavailable (a <see cref="NpgsqlException"/>, which the Api answers 503). A
    /// command waited for no longer may still run: the caller must close its session.
    /// </summary>
    public static async Task WaitForRequestAsync(Task running, TimeSpan timeout, string what, CancellationToken cancellationToken)
    {
        try
        {
            await running.WaitAsync(timeout, cancellationToken);
        }
        catch (Exception exception) when (exception is TimeoutException or OperationCanceledException)
        {
            // It fails when its session is closed; no one will look.
            running.Abandon();
            if (exception is TimeoutException)
            {
                throw new NpgsqlException($"The database did not answer {what} within {timeout.TotalSeconds:0} s.", exception);
            }

            throw;
        }
    }

    /// <inheritdoc cref="WaitForRequestAsync(Task, TimeSpan, string, CancellationToken)"/>
    public static async Task<T> WaitForRequestAsync<T>(Task<T> running, TimeSpan timeout, string what, CancellationToken cancellationToken)
    {
        await WaitForRequestAsync((Task)running, timeout, what, cancellationToken);
        return await running;
    }

    /// <summary>
    /// Closes an unpooled connection, which ends its session on the server (its transaction rolls back, its locks go)
    /// without waiting for the server, even when a command on it is still reading.
    /// </summary>
    public static async ValueTask CloseAsync(NpgsqlConnection connection)
    {
        try
        {
            await connection.DisposeAsync();
        }
        catch (NpgsqlException)
        {
            // A command no longer waited for is still reading: Npgsql's close fails on it, and breaks the connection,
            // which ends the session all the same.
        }
    }
}
