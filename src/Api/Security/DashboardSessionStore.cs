using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Api.Security;

/// <summary>
/// The server side of a dashboard session: a row in <c>dashboard_sessions</c> per sign-in, named by
/// the session cookie. Signing out deletes it, so a copy of the cookie is refused afterwards on every
/// replica; and it carries the absolute end of the session. Times are the database's, not a replica's.
/// </summary>
public sealed class DashboardSessionStore(IDbContextFactory<ConveyorDbContext> contexts)
{
    /// <summary>
    /// Records a new session lasting at most <paramref name="lifetime"/>, and returns its id; the key's oldest
    /// sessions beyond <paramref name="maxPerKey"/> end.
    /// </summary>
    public async Task<Guid> StartAsync(string keyName, TimeSpan lifetime, int maxPerKey, CancellationToken cancellationToken)
    {
        var id = Guid.NewGuid();
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        // The expired rows go here rather than in a sweeper: there are as many as sign-ins, and the index finds them.
        await db.Database.ExecuteSqlAsync($"DELETE FROM dashboard_sessions WHERE expires_at <= now()", cancellationToken);
        await db.Database.ExecuteSqlAsync(
            $"INSERT INTO dashboard_sessions (id, key_name, started_at, expires_at) VALUES ({id}, {keyName}, now(), now() + {lifetime})",
            cancellationToken);
        var othersKept = maxPerKey - 1;
        await db.Database.ExecuteSqlAsync(
            $"""
            DELETE FROM dashboard_sessions WHERE key_name = {keyName} AND id <> {id} AND id NOT IN (
                SELECT id FROM dashboard_sessions WHERE key_name = {keyName} AND id <> {id} ORDER BY started_at DESC LIMIT {othersKept})
            """,
            cancellationToken);
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
