namespace Conveyor.Worker.Jobs;

/// <summary>
/// Transaction advisory locks on the job ids messages claim (<see cref="JobRef"/>). An inbox that may create
/// a job row under a claimed id takes the id's lock first and only then, in a later statement, checks that
/// no row holds the id: no snapshot shows a row another transaction is writing under it at that moment,
/// and an insert meeting that row would wait for it and then fail with a unique violation (permanent).
/// Both inboxes (<see cref="Inbox.InboxBatcher"/>, <see cref="Inbox.InboxFilter{T}"/>) lock the same
/// key for an id, so pods with and without batching exclude each other too, and so does an attempt counted
/// outside an inbox transaction (the lease inbox, a failure whose count rolled back) that may create the row.
/// </summary>
public static class ClaimedJobIdLocks
{
    /// <summary>First half of each lock's key ("CJID"), so they cannot collide with other advisory locks; the second is <c>hashtext(id::text)</c>.</summary>
    private const int LockClass = 0x43_4A_49_44;

    /// <summary>Takes the lock of <paramref name="id"/>.</summary>
    public static FormattableString One(Guid id) => $"SELECT pg_advisory_xact_lock({LockClass}, hashtext(CAST({id} AS uuid)::text))";

    /// <summary>
    /// Takes, in one order, the lock of each claimed job id in the uuid array <c>$1</c>, as <see cref="One"/> takes
    /// one; two ids with the same hash only wait for each other.
    /// </summary>
    public static readonly string EachSql = $"""
        SELECT pg_advisory_xact_lock({LockClass}, k.h)
          FROM (SELECT DISTINCT hashtext(i.id::text) AS h FROM unnest($1::uuid[]) AS i(id) ORDER BY 1) k
        """;
}
