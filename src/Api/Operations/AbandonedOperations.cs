using Conveyor.Api.ErrorQueues;
using Conveyor.Storage;
using Conveyor.Storage.Operations;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Operations;

/// <summary>
/// Ends operations whose process died mid-walk, so that nobody waits for them forever: a row still
/// <c>running</c> whose progress has not been written for <see cref="ErrorQueueOptions.AbandonedAfterSeconds"/>
/// is marked <c>interrupted</c> when operations are read. A live operation, on whichever replica, writes
/// its progress twice a second and stops itself when it cannot (see <see cref="OperationRunner"/>), so a
/// row that stale has no walk behind it; the database's clock decides, so replicas' clocks do not matter.
/// </summary>
public sealed class AbandonedOperations(IDbContextFactory<ConveyorDbContext> dbFactory, IOptions<ErrorQueueOptions> options, ILogger<AbandonedOperations> logger)
{
    /// <summary>Marks every abandoned operation interrupted; returns how many there were.</summary>
    public async Task<int> SettleAsync(CancellationToken cancellationToken)
    {
        var seconds = options.Value.AbandonedAfterSeconds;
        var staleAfter = TimeSpan.FromSeconds(seconds);
        var detail = $"No progress was recorded for {seconds} s: the process running it stopped before it finished; unfinished messages stayed in the queue.";
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var settled = await db.Database.ExecuteSqlAsync(
            $"""
            UPDATE error_queue_operations
               SET state = {ErrorQueueOperationStates.Interrupted}, finished_at = now(), updated_at = now(), detail = {detail}
             WHERE state = {ErrorQueueOperationStates.Running} AND updated_at < now() - {staleAfter}
            """,
            cancellationToken);
        if (settled > 0)
        {
            OperationsLog.FoundAbandoned(logger, settled, seconds);
        }

        return settled;
    }
}
