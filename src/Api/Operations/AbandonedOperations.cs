using Conveyor.Api.ErrorQueues;
using Conveyor.ServiceDefaults;
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
/// Only this vhost's rows (and those recorded before rows named their vhost): a deployment on another
/// vhost sharing the database reads its own, with its own <see cref="ErrorQueueOptions.AbandonedAfterSeconds"/>.
/// </summary>
public sealed class AbandonedOperations(
    IDbContextFactory<ConveyorDbContext> dbFactory,
    IOptions<ErrorQueueOptions> options,
    IOptions<RabbitMqOptions> rabbit,
    ILogger<AbandonedOperations> logger)
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
               AND (virtual_host = {rabbit.Value.VirtualHost} OR virtual_host IS NULL)
            """,
            cancellationToken);
        if (settled > 0)
        {
            OperationsLog.FoundAbandoned(logger, settled, seconds);
        }

        return settled;
    }
}
