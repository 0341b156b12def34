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
    public const int LockClass = 0x43_4A_49_44;
}
