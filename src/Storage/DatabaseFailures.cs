using Npgsql;

namespace Conveyor.Storage;

/// <summary>
/// Tells "the database cannot be used right now" (down, restarting, refusing connections, out of
/// connections, refusing this service's login or its grants) apart from errors in what was asked of
/// it. The first is worth waiting out, and no message causes it; the second is a bug or bad data and
/// will fail the same way again.
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
                    return IsUnavailable(postgres);
                case NpgsqlException:
                    // Not an error reported by the server: connecting, the pool, or the socket failed.
                    return true;
            }
        }

        return false;
    }

    /// <summary>True when <paramref name="exception"/> or any exception it wraps is an error from or about the database.</summary>
    public static bool IsDatabaseError(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is NpgsqlException)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Whether the server's error says it cannot be used right now, whatever the statement.</summary>
    public static bool IsUnavailable(PostgresException exception) =>
        IsUnavailableState(exception.SqlState)
        // object_not_in_prerequisite_state covers statement errors too (currval before nextval); only
        // when it ends the session (FATAL, the severity field, not the localised text) is it the
        // server refusing the connection: ALTER DATABASE ... ALLOW_CONNECTIONS false.
        || (exception.SqlState == PostgresErrorCodes.ObjectNotInPrerequisiteState && IsFatal(exception));

    /// <summary>
    /// SQL states that say the database cannot serve this service now, and that no message's data
    /// can cause: classes 08 (connection exception), 53 (insufficient resources), 57 (operator
    /// intervention: <c>57P01 admin_shutdown</c> is what a stopping server sends to every session,
    /// <c>57P03 cannot_connect_now</c> what a starting one answers), 58 (system error), 28 (invalid
    /// authorization: a wrong or rotated password, a role that may not log in, <c>pg_hba.conf</c>),
    /// <c>3D000 invalid_catalog_name</c> (the database does not exist, or not yet) and <c>42501
    /// insufficient_privilege</c> (no CONNECT on the database, or a GRANT missing on a table: the
    /// worker's statements are fixed by its code, so a missing grant fails every message alike until
    /// an operator adds it), and for the same reason <c>42P01 undefined_table</c> and <c>42703
    /// undefined_column</c>: the schema is behind the code (a pod started before its migration Job
    /// ran), which every message meets alike until the migration is applied. <c>25006 read_only_sql_transaction</c>: the
    /// server takes no writes (a standby that a failover or a pooler left the service on, a primary set
    /// <c>default_transaction_read_only</c> by an operator or by a managed service whose disk is nearly full); no statement
    /// of the services writes in a read-only transaction of its own making (a report's snapshot only reads), so every write of every message fails alike
    /// until the server takes them again. Not <c>57014 query_canceled</c>: the server is up and stopped a statement
    /// that ran past <c>statement_timeout</c> (or was cancelled), which a slow query will do again.
    /// </summary>
    public static bool IsUnavailableState(string sqlState) =>
        sqlState.Length == 5
        && (sqlState[..2] is "08" or "53" or "57" or "58" or "28"
            || sqlState is PostgresErrorCodes.InvalidCatalogName or PostgresErrorCodes.InsufficientPrivilege
                or PostgresErrorCodes.UndefinedTable or PostgresErrorCodes.UndefinedColumn or PostgresErrorCodes.ReadOnlySqlTransaction)
        && sqlState != PostgresErrorCodes.QueryCanceled;

    /// <summary>True when the server cancelled a statement of <paramref name="exception"/> (<c>statement_timeout</c>, or a cancel request).</summary>
    public static bool IsQueryCanceled(Exception exception) => HasServerError(exception, PostgresErrorCodes.QueryCanceled);

    /// <summary>
    /// <c>idle_in_transaction_session_timeout</c> ended the session (FATAL): its transaction waited longer than that for
    /// the client's next statement. <see cref="PostgresErrorCodes"/> has no name for it.
    /// </summary>
    public const string IdleInTransactionSessionTimeout = "25P03";

    /// <summary>
    /// True when the server ended the session of <paramref name="exception"/> because its transaction sat idle past
    /// <c>idle_in_transaction_session_timeout</c>: the work is undone, and may pass when tried again.
    /// </summary>
    public static bool IsIdleTransactionEnded(Exception exception) => HasServerError(exception, IdleInTransactionSessionTimeout);

    /// <summary>
    /// True when a statement of <paramref name="exception"/> gave up waiting for a lock at its <c>lock_timeout</c>
    /// (EF Core wraps it, as a failure it takes for transient).
    /// </summary>
    public static bool IsLockNotAvailable(Exception exception) => HasServerError(exception, PostgresErrorCodes.LockNotAvailable);

    /// <summary>True when <paramref name="exception"/> or any exception it wraps is the server's error <paramref name="sqlState"/>.</summary>
    private static bool HasServerError(Exception exception, string sqlState)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is PostgresException postgres && postgres.SqlState == sqlState)
            {
                return true;
            }
        }

        return false;
    }

    private static bool IsFatal(PostgresException exception) =>
        exception.InvariantSeverity is "FATAL" or "PANIC";
}
