using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Api.Jobs;

internal enum CancelStatus
{
    /// <summary>The job was queued or scheduled and is now cancelled.</summary>
    Cancelled,

    /// <summary>Cancelled before: a repeated DELETE.</summary>
    AlreadyCancelled,

    NotFound,

    /// <summary>Running, waiting for a retry, or finished: too late to cancel.</summary>
    TooLate,

    /// <summary>
    /// Another transaction held the job's row (a worker claiming or running it) or its stored command
    /// (the dispatcher publishing it) longer than <see cref="JobRowTransactions.LockWaitMilliseconds"/>: nothing changed.
    /// </summary>
    Busy,
}

internal sealed record CancelResult(CancelStatus Status, Job? Job = null);

/// <summary>
/// Cancels a job that has not started. The status changes only from <c>queued</c> or <c>scheduled</c>,
/// in one UPDATE, so it cannot race a worker starting the job: whichever writes the row first wins,
/// and a worker that receives a cancelled job's message acks it without running it. A job back in
/// <c>queued</c> after a worker shutdown cut an attempt short (it carries that attempt's error) has
/// started: the attempt may have had its effect outside (a charge at the gateway), which only running
/// the job again settles, so it is not cancelled. A worker killed outright mid-attempt leaves no such trace (the
/// attempt's transaction rolls back, its count with it): that job reads queued with 0 attempts and is cancelled, although
/// the attempt may have reached the payment gateway; the README's cancel row tells the operator how to settle it, and the worker
/// that acks the command, redelivered, says so in the job's last error (<c>JobTracker.RecordCancelledRedeliveryAsync</c>). A scheduled
/// job's stored command is deleted in the same transaction; if the dispatcher holds it at that
/// moment, the cancel waits for it: it is published anyway and the worker skips it.
/// The transaction waits for a held row at most <see cref="JobRowTransactions.LockWaitMilliseconds"/>, and then
/// answers <see cref="CancelStatus.Busy"/> (<see cref="JobRowTransactions"/>).
/// </summary>
internal sealed class JobCanceller(JobRowTransactions transactions, TimeProvider clock, ILogger<JobCanceller> logger)
{
    public async Task<CancelResult> CancelAsync(Guid jobId, CancellationToken cancellationToken) =>
        // Null: a lock wait ran out and the transaction rolled back, the job is as it was.
        await transactions.RunAsync("a job's cancel", statements => CancelOnAsync(statements, jobId), cancellationToken)
        ?? new CancelResult(CancelStatus.Busy);

    private async Task<CancelResult> CancelOnAsync(JobRowTransactions.Statements statements, Guid jobId)
    {
        var db = statements.Db;
        // The dispatcher locks a stored command's row, then, when its publish fails, writes the job's row.
        // Taken in that order here too, a cancel waits for a dispatch under way to end; updating the job
        // first, the two waited for each other and PostgreSQL aborted one (a 500, or a dispatch redone).
        var dedupeKey = ScheduledJobs.DedupeKey(jobId);
        await statements.Answered(db.Database.ExecuteSqlInterpolatedAsync(
            $"SELECT 1 FROM scheduled_messages WHERE dedupe_key = {dedupeKey} FOR UPDATE", CancellationToken.None));
        var now = clock.GetUtcNow();
        // Its times as every other write of a job sets them (ADR 0013): a replica whose clock is behind the one that
        // wrote the row last would otherwise make it finished before it was created, and move updated_at back.
        // The request is cleared: nothing will publish it again.
        var cancelled = await statements.Answered(db.Database.ExecuteSqlInterpolatedAsync($"""
            UPDATE jobs SET status = {JobStatus.Cancelled}, next_attempt_at = NULL, request_body = NULL,
                   updated_at = GREATEST(updated_at + interval '1 microsecond', {now}),
                   finished_at = GREATEST(updated_at + interval '1 microsecond', {now})
             WHERE id = {jobId}
               AND ((status = {JobStatus.Queued} AND attempts = 0 AND last_error IS NULL) OR status = {JobStatus.Scheduled})
            """, CancellationToken.None));
        if (cancelled == 1)
        {
            await statements.Answered(db.ScheduledMessages.Where(s => s.DedupeKey == dedupeKey).ExecuteDeleteAsync(CancellationToken.None));
        }

        var job = await statements.Answered(
            db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == jobId, CancellationToken.None));
        if (job is null)
        {
            return new CancelResult(CancelStatus.NotFound);
        }

        if (cancelled == 1)
        {
            JobsLog.JobCancelled(logger, job.Id, job.Kind);
            return new CancelResult(CancelStatus.Cancelled, job);
        }

        return new CancelResult(job.Status == JobStatus.Cancelled ? CancelStatus.AlreadyCancelled : CancelStatus.TooLate, job);
    }
}
