using Conveyor.Api.Hosting;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Api.Security;

/// <summary>
/// The server side of a dashboard session: a row in <c>dashboard_sessions</c> per sign-in, named by
/// the session cookie. Signing out deletes it, so a copy of the cookie is refused afterwards on every
/// replica; and it carries the absolute end of the session. Times are the database's, not a replica's.
/// </summary>
public sealed class DashboardSessionStore(IDbContextFactory<ConveyorDbContext> contexts, IdleTransactions idleTransactions)
{
    /// <summary>First half of the advisory lock that sign-ins of one key take turns on ("CDSS"); the second is a hash of the key's name.</summary>
    private const int LockClass = 0x43_44_53_53;

    /// <summary>
    /// Records a new session lasting at most <paramref name="lifetime"/>, and returns its id; the key's oldest
    /// sessions beyond <paramref name="maxPerKey"/> end. Sign-ins of one key take turns (a transaction-scoped
    /// advisory lock on the key's name): two at once would each count the other's row among the sessions to
    /// trim, and at the limit could end each other's new sessions, leaving fewer than the limit, or none.
    /// </summary>
    public async Task<Guid> StartAsync(string keyName, TimeSpan lifetime, int maxPerKey, CancellationToken cancellationToken)
    {
        var id = Guid.NewGuid();
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        // The expired rows go here rather than in a sweeper: there are as many as sign-ins, and the index finds them.
        await db.Database.ExecuteSqlAsync($"DELETE FROM dashboard_sessions WHERE expires_at <= now()", cancellationToken);
        await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        // Other sign-ins of the key wait for this lock: the server ends the transaction if the Api falls silent in it (IdleTransactions).
        await db.Database.ExecuteSqlAsync(
            $"""
            SELECT set_config('idle_in_transaction_session_timeout', {idleTransactions.LimitMilliseconds}, true),
                   pg_advisory_xact_lock({LockClass}, hashtext({keyName}))
            """,
            cancellationToken);
        // clock_timestamp(), not now(): the transaction's start, which now() gives, is before the wait for the lock.
        await db.Database.ExecuteSqlAsync(
            $"INSERT INTO dashboard_sessions (id, key_name, started_at, expires_at) VALUES ({id}, {keyName}, clock_timestamp(), clock_timestamp() + {lifetime})",
            cancellationToken);
        var othersKept = maxPerKey - 1;
        await db.Database.ExecuteSqlAsync(
            $"""
            DELETE FROM dashboard_sessions WHERE key_name = {keyName} AND id <> {id} AND id NOT IN (
                SELECT id FROM dashboard_sessions WHERE key_name = {keyName} AND id <> {id} ORDER BY started_at DESC, id LIMIT {othersKept})
            """,
            cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return id;
    }

    /// <summary>True while the session was neither ended nor past its absolute lifetime: one primary-key lookup.</summary>
    public async Task<bool> IsLiveAsync(Guid id, CancellationToken cancellationToken)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        return await db.Database
            .SqlQuery<bool>($"SELECT EXISTS (SELECT 1 FROM dashboard_sessions WHERE id = {id} AND expires_at > now()) AS \"Value\"")
            .SingleAsync(cancellationToken);
    }

    public async Task EndAsync(Guid id, CancellationToken cancellationToken)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        await db.Database.ExecuteSqlAsync($"DELETE FROM dashboard_sessions WHERE id = {id}", cancellationToken);
    }
}
