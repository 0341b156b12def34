using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Retention;

public sealed record SweepResult(int InboxRows, int Jobs, int AuditRows);

/// <summary>
/// Deletes what is past its retention window, in small batches. Runs in every worker; concurrent
/// sweeps only split the work (each batch deletes rows it finds, SKIP LOCKED).
/// </summary>
public sealed partial class RetentionSweeper(
    IDbContextFactory<ConveyorDbContext> dbFactory,
    IOptions<RetentionOptions> options,
    TimeProvider time,
    ILogger<RetentionSweeper> logger) : BackgroundService
{
    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        options.Value.Enabled
            ? Periodically.RunAsync(TimeSpan.FromSeconds(options.Value.IntervalSeconds), time, SweepQuietlyAsync, stoppingToken)
            : Task.CompletedTask;

    /// <summary>One sweep as of now; a failure is logged and the next period tries again.</summary>
    private async Task SweepQuietlyAsync(CancellationToken stoppingToken)
    {
        try
        {
            var swept = await SweepAsync(time.GetUtcNow(), stoppingToken);
            if (swept.InboxRows + swept.Jobs + swept.AuditRows > 0)
            {
                LogSwept(swept.InboxRows, swept.Jobs, swept.AuditRows);
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException
            && !(exception is OperationCanceledException && stoppingToken.IsCancellationRequested))
        {
            LogSweepFailed(exception);
        }
    }

    /// <summary>One full sweep as of <paramref name="now"/>.</summary>
    public async Task<SweepResult> SweepAsync(DateTimeOffset now, CancellationToken cancellationToken)
    {
        var settings = options.Value;
        var inboxBefore = now.AddHours(-settings.InboxHours);
        var jobsBefore = now.AddHours(-settings.JobHours);
        var auditBefore = now.AddHours(-settings.AuditHours);
        var batch = settings.BatchSize;

        var inbox = await DeleteInBatchesAsync(db => db.Database.ExecuteSqlInterpolatedAsync($"""
            DELETE FROM inbox WHERE ctid IN (
                SELECT ctid FROM inbox WHERE status = {InboxStatus.Done} AND received_at < {inboxBefore}
                 LIMIT {batch} FOR UPDATE SKIP LOCKED)
            """, cancellationToken), batch, cancellationToken);
        var jobs = await DeleteInBatchesAsync(db => db.Database.ExecuteSqlInterpolatedAsync($"""
            DELETE FROM jobs WHERE id IN (
                SELECT id FROM jobs
                 WHERE status IN ({JobStatus.Succeeded}, {JobStatus.DeadLettered}, {JobStatus.Cancelled})
                   AND created_at < {jobsBefore} AND updated_at < {jobsBefore}
                 LIMIT {batch} FOR UPDATE SKIP LOCKED)
            """, cancellationToken), batch, cancellationToken);
        var audit = await DeleteInBatchesAsync(db => db.Database.ExecuteSqlInterpolatedAsync($"""
            DELETE FROM error_queue_operations WHERE id IN (
                SELECT id FROM error_queue_operations WHERE state <> 'running' AND created_at < {auditBefore}
                 LIMIT {batch} FOR UPDATE SKIP LOCKED)
            """, cancellationToken), batch, cancellationToken);
        return new SweepResult(inbox, jobs, audit);
    }

    private async Task<int> DeleteInBatchesAsync(Func<ConveyorDbContext, Task<int>> deleteBatch, int batchSize, CancellationToken cancellationToken)
    {
        var total = 0;
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        while (true)
        {
            var deleted = await deleteBatch(db);
            total += deleted;
            if (deleted < batchSize)
            {
                return total;
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Retention: deleted {InboxRows} inbox rows, {Jobs} jobs, {AuditRows} audit rows")]
    private partial void LogSwept(int inboxRows, int jobs, int auditRows);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The retention sweep failed; it runs again at the next interval")]
    private partial void LogSweepFailed(Exception exception);
}
