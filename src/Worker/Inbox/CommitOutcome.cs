using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// What became of an inbox transaction whose COMMIT failed. A connection that broke while the COMMIT was under
/// way (the server applied it, its answer never came) leaves the outcome unknown to the client: taken for rolled
/// back, an attempt that succeeded was failed and sent round again, and a failed attempt counted twice. The inboxes
/// learn their transaction's id in a round trip they make anyway (<see cref="TransactionIdSql"/> in the claim; in the lease inbox, in its final update of the inbox row, in the
/// lease's claim and in the count of the run's attempt) and
/// ask after it here, only when the COMMIT failed (ADR 0004).
/// </summary>
internal static class CommitOutcome
{
    /// <summary>
    /// The SQL expression of the current transaction's id (<c>xid8</c> as text), null while it has written nothing:
    /// read in the claim, after its first write, so that it names the transaction the COMMIT ends.
    /// </summary>
    public const string TransactionIdSql = "pg_current_xact_id_if_assigned()::text";

    /// <summary>
    /// Commits <paramref name="transaction"/>. A COMMIT that throws is asked after (<see cref="CommittedAfterAllAsync"/>):
    /// applied, its answer lost with the connection, its exception is returned, for the caller to log, as a commit;
    /// otherwise it is thrown. Null when the COMMIT was answered.
    /// </summary>
    public static async Task<Exception?> CommitAsync(
        IDbContextTransaction transaction, IDbContextFactory<ConveyorDbContext> dbFactory, string? transactionId, CancellationToken cancellationToken)
    {
        try
        {
            await transaction.CommitAsync(cancellationToken);
            return null;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            if (await CommittedAfterAllAsync(dbFactory, transactionId))
            {
                return exception;
            }

            throw;
        }
    }

    /// <summary>
    /// Whether the transaction <paramref name="transactionId"/> committed, asked on a connection of its own
    /// (<c>pg_xact_status</c>) after its COMMIT failed. False when it did not, is still in progress, or cannot be told.
    /// </summary>
    private static async Task<bool> CommittedAfterAllAsync(IDbContextFactory<ConveyorDbContext> dbFactory, string? transactionId)
    {
        if (transactionId is null)
        {
            return false;
        }

        try
        {
            await using var db = await dbFactory.CreateDbContextAsync();
            var status = await db.Database.SqlQuery<string>($"SELECT pg_xact_status(CAST({transactionId} AS xid8)) AS \"Value\"").ToListAsync();
            return status is ["committed"];
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            return false;
        }
    }
}
