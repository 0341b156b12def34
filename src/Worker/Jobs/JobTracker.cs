using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// Writes job status in short transactions of its own, so that status stays visible while the
/// inbox transaction is open and survives when that transaction rolls back.
/// </summary>
public sealed class JobTracker(IDbContextFactory<ConveyorDbContext> dbFactory, TimeProvider time)
{
    private const int MaxErrorLength = 4000;

    /// <summary>Marks an attempt as started; creates the row when another service published directly.</summary>
    public async Task StartAttemptAsync(JobRef job, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var now = time.GetUtcNow();
        var id = job.JobId ?? Guid.CreateVersion7();
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            VALUES ({id}, {job.Kind}, {job.BusinessKey}, {JobStatus.Running}, 1, {now}, {now})
            ON CONFLICT (kind, business_key) DO UPDATE
               SET status = {JobStatus.Running}, attempts = jobs.attempts + 1, updated_at = {now}
             WHERE jobs.status <> {JobStatus.Succeeded}
            """, cancellationToken);
    }

    /// <summary>Records the error of a failed attempt; the status says what happens next.</summary>
    public async Task RecordFailureAsync(JobRef job, Exception exception, string status, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var now = time.GetUtcNow();
        var error = Describe(exception);
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET status = {status}, last_error = {error}, updated_at = {now},
                   finished_at = CASE WHEN {status} = {JobStatus.Failed} THEN {now} ELSE finished_at END
             WHERE kind = {job.Kind} AND business_key = {job.BusinessKey} AND status <> {JobStatus.Succeeded}
            """, cancellationToken);
    }

    public async Task ReportProgressAsync(JobRef job, int percent, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var now = time.GetUtcNow();
        var clamped = Math.Clamp(percent, 0, 100);
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET progress = {clamped}, updated_at = {now}
             WHERE kind = {job.Kind} AND business_key = {job.BusinessKey} AND status = {JobStatus.Running}
            """, cancellationToken);
    }

    /// <summary>Marks success inside the caller's (inbox) transaction, so it commits with the effect.</summary>
    public async Task MarkSucceededAsync(ConveyorDbContext db, JobRef job, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET status = {JobStatus.Succeeded}, last_error = NULL, progress = CASE WHEN progress IS NULL THEN NULL ELSE 100 END,
                   updated_at = {now}, finished_at = {now}
             WHERE kind = {job.Kind} AND business_key = {job.BusinessKey}
            """, cancellationToken);
    }

    public static string Describe(Exception exception)
    {
        var text = $"{exception.GetType().Name}: {exception.Message}";
        return text.Length <= MaxErrorLength ? text : text[..MaxErrorLength];
    }
}
