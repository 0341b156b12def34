using Npgsql;

namespace Conveyor.Storage;

/// <summary>
/// Tells "PostgreSQL cannot be reached right now" (down, restarting, refusing connections, out of
/// connections) apart from errors in what was asked of it. The first is worth waiting out; the
/// second is a bug or bad data and will fail the same way again.
/// </summary>
public static class DatabaseFailures
{
    /// <summary>True when <paramref name="exception"/> or any exception it wraps says the database is unavailable.</summary>
    public static bool IsUnavailable(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            switch (current)
            {
                case PostgresException postgres:
                    return IsUnavailableState(postgres.SqlState);
                case NpgsqlException:
                    // Not an error reported by the server: connecting, the pool, or the socket failed.
                    return true;
            }
        }

        return false;
    }

    /// <summary>
    /// SQL state classes 08 (connection exception), 53 (insufficient resources), 57 (operator
    /// intervention: <c>57P01 admin_shutdown</c> is what a stopping server sends to every session,
    /// <c>57P03 cannot_connect_now</c> what a starting one answers) and 58 (system error), except
    /// <c>57014 query_canceled</c>: the server is up and stopped a statement that ran past
    /// <c>statement_timeout</c> (or was cancelled), which a slow query will do again.
    /// </summary>
    public static bool IsUnavailableState(string sqlState) =>
        sqlState.Length == 5 && sqlState[..2] is "08" or "53" or "57" or "58" && sqlState != PostgresErrorCodes.QueryCanceled;

    /// <summary>True when the server cancelled a statement of <paramref name="exception"/> (<c>statement_timeout</c>, or a cancel request).</summary>
    public static bool IsQueryCanceled(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is PostgresException { SqlState: PostgresErrorCodes.QueryCanceled })
            {
                return true;
            }
        }

        return false;
    }
}
