using Conveyor.Api.Hosting;

namespace Conveyor.Api.Jobs;

/// <summary>
/// PostgreSQL advisory locks on an <c>Idempotency-Key</c>, held to the end of a transaction: an insert of
/// keyed job rows (<see cref="JobRows"/>, a scheduled job's insert) holds its keys' locks shared; recording
/// a key as an alias of an existing job (<see cref="Storage.Jobs.JobKeyAlias"/>) holds its key's lock
/// exclusively. The two write different tables, so no unique index can keep one key from naming two
/// jobs: the lock orders them, and each looks for the other's row once it holds it. Two keys with the
/// same hash only wait for each other.
/// </summary>
internal static class KeyLocks
{
    /// <summary>First half of every lock key ("CJKY"), so these locks cannot collide with other advisory locks.</summary>
    private const int LockClass = 0x43_4A_4B_59;

    /// <summary>
    /// Takes the lock of <paramref name="key"/> shared, as a request's transaction's first statement: it also bounds
    /// how long the server keeps the transaction waiting for the Api's next statement (<see cref="IdleTransactions"/>).
    /// </summary>
    public static FormattableString Shared(string key, IdleTransactions idle) =>
        $"SELECT set_config('idle_in_transaction_session_timeout', {idle.LimitMilliseconds}, true), pg_advisory_xact_lock_shared({LockClass}, hashtext({key}))";

    /// <summary>Takes the lock of each key in the text array <c>$1</c> shared, as <see cref="Shared"/> takes one.</summary>
    public static readonly string SharedEachSql =
        $"SELECT pg_advisory_xact_lock_shared({LockClass}, hashtext(k.key)) FROM unnest($1::text[]) AS k(key)";

    /// <summary>Takes the lock of <paramref name="key"/> exclusively, as a request's transaction's first statement (as <see cref="Shared"/>).</summary>
    public static FormattableString Exclusive(string key, IdleTransactions idle) =>
        $"SELECT set_config('idle_in_transaction_session_timeout', {idle.LimitMilliseconds}, true), pg_advisory_xact_lock({LockClass}, hashtext({key}))";
}
