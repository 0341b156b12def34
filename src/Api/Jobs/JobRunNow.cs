using System.Globalization;
using Conveyor.Api.Backpressure;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Api.Jobs;

internal enum RunNowStatus
{
    /// <summary>The job's stored command is due now (or was already released to its queue): a worker runs it next.</summary>
    Due,

    NotFound,

    /// <summary>Neither scheduled nor retry-scheduled: nothing of it waits in the store.</summary>
    NotWaiting,

    /// <summary>The kind's queue is full, or the broker blocks publishers: nothing changed (<see cref="RunNowResult.Refusal"/>).</summary>
    Refused,

    /// <summary>
    /// Another transaction held the job's row or its stored command longer than
    /// <see cref="JobRowTransactions.LockWaitMilliseconds"/>: nothing changed.
    /// </summary>
    Busy,
}

/// <param name="Released">How many stored commands of the job were due later and are due now (0: already released).</param>
internal sealed record RunNowResult(RunNowStatus Status, Job? Job = null, int Released = 0, AdmissionDecision Refusal = default);

/// <summary>
/// Makes a job that waits in <c>scheduled_messages</c> due now: one <c>scheduled</c> for a later <c>runAt</c>, or one
/// <c>retry-scheduled</c> whose delayed redelivery is minutes or hours away (after a downstream outage ends, say). Its
/// stored command gets the database's present time as its due time and the dispatchers are woken (NOTIFY), so the
/// first one free publishes it, with the same headers: a redelivery keeps its sealed attempt count, so its retry budget
/// is what it was, and the inbox still applies the job once. The job's status stays as it is until a worker takes the
/// command; its <c>nextAttemptAt</c> becomes that due time. The stored rows are locked before the job's row, in the
/// dispatcher's order, so a dispatch under way is waited for (the command is then being published anyway). A job of a
/// kind whose queue is full, or while the broker blocks publishers, is refused as a submission is: releasing it would
/// put one more command into the queue the gate protects.
/// </summary>
internal sealed class JobRunNow(JobRowTransactions transactions, BackpressureGate gate, TimeProvider clock, ILogger<JobRunNow> logger)
{
    public async Task<RunNowResult> RunNowAsync(Guid jobId, CancellationToken cancellationToken) =>
        await transactions.RunAsync("a job's run-now", statements => RunNowOnAsync(statements, jobId), cancellationToken)
        ?? new RunNowResult(RunNowStatus.Busy);

    private async Task<RunNowResult> RunNowOnAsync(JobRowTransactions.Statements statements, Guid jobId)
    {
        var db = statements.Db;
        // A delayed redelivery names its job by job_id; a runAt job's command is also keyed by it (and was, alone,
        // before job_id existed).
        var dedupeKey = ScheduledJobs.DedupeKey(jobId);
        await statements.Answered(db.Database.ExecuteSqlInterpolatedAsync(
            $"SELECT 1 FROM scheduled_messages WHERE job_id = {jobId} OR dedupe_key = {dedupeKey} FOR UPDATE", CancellationToken.None));
        await statements.Answered(db.Database.ExecuteSqlInterpolatedAsync(
            $"SELECT 1 FROM jobs WHERE id = {jobId} FOR UPDATE", CancellationToken.None));
        var job = await statements.Answered(
            db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == jobId, CancellationToken.None));
        if (job is null)
        {
            return new RunNowResult(RunNowStatus.NotFound);
        }

        if (job.Status is not (JobStatus.Scheduled or JobStatus.RetryScheduled))
        {
            return new RunNowResult(RunNowStatus.NotWaiting, job);
        }

        if (gate.Check(job.Kind) is { Admission: not Admission.Admitted } refused)
        {
            return new RunNowResult(RunNowStatus.Refused, job, Refusal: refused);
        }

        // Not composed (ToListAsync, not SingleAsync): EF would wrap the UPDATE, and a data-modifying statement cannot be nested.
        var released = await statements.Answered(db.Database.SqlQuery<DateTimeOffset>(
            $"""
            UPDATE scheduled_messages SET due_at = clock_timestamp()
             WHERE (job_id = {jobId} OR dedupe_key = {dedupeKey}) AND due_at > clock_timestamp()
            RETURNING due_at AS "Value"
            """).ToListAsync(CancellationToken.None));
        if (released.Count > 0)
        {
            var dueAt = released.Max();
            var now = clock.GetUtcNow();
            await statements.Answered(db.Database.ExecuteSqlInterpolatedAsync(
                $"UPDATE jobs SET next_attempt_at = {dueAt}, updated_at = GREATEST(updated_at + interval '1 microsecond', {now}) WHERE id = {jobId}",
                CancellationToken.None));
            // The payload is the due time in Unix milliseconds, as the worker's store sends it; delivered at the commit.
            await statements.Answered(db.Database.ExecuteSqlInterpolatedAsync(
                $"SELECT pg_notify({ScheduledJobs.NotifyChannel}, {dueAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)})",
                CancellationToken.None));
            job = await statements.Answered(
                db.Jobs.AsNoTracking().WithoutRequestBody().FirstAsync(j => j.Id == jobId, CancellationToken.None));
        }

        JobsLog.JobRunNow(logger, job.Id, job.Kind, job.Status, released.Count);
        return new RunNowResult(RunNowStatus.Due, job, released.Count);
    }
}
