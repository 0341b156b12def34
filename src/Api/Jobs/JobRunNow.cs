using System.Globalization;
using Conveyor.Api.Backpressure;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Npgsql;

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

/// <summary>What a run-now of many jobs did: null <see cref="Summary"/> when the gate refused it (<see cref="Refusal"/>).</summary>
internal sealed record RunNowManyResult(JobsRunNow? Summary, AdmissionDecision Refusal = default);

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

    /// <summary>
    /// Makes up to <paramref name="limit"/> jobs of <paramref name="kind"/> in <paramref name="status"/> (scheduled or
    /// retry-scheduled) due now, those due soonest first, each as <see cref="RunNowAsync"/> does one. Stored commands
    /// and job rows another transaction holds (a dispatch, a worker taking the job) are passed over, not waited for:
    /// they are on their way, or are counted in <see cref="JobsRunNow.StillWaiting"/> for the next request. The gate is
    /// checked once, before any is released.
    /// </summary>
    public async Task<RunNowManyResult> RunNowManyAsync(string kind, string status, int limit, CancellationToken cancellationToken)
    {
        if (gate.Check(kind) is { Admission: not Admission.Admitted } refused)
        {
            return new RunNowManyResult(null, refused);
        }

        var summary = await transactions.RunAsync("a run-now of many jobs", async statements =>
        {
            var now = clock.GetUtcNow();
            // Not composed: a data-modifying WITH cannot be nested.
            var counts = await statements.Answered(statements.Db.Database.SqlQuery<ReleasedCounts>(
                $"""
                WITH picked AS (
                    SELECT s.id, j.id AS job_id
                      FROM jobs j JOIN scheduled_messages s ON s.job_id = j.id
                     WHERE j.kind = {kind} AND j.status = {status} AND s.due_at > clock_timestamp()
                     ORDER BY s.due_at, s.id
                     LIMIT {limit}
                       FOR UPDATE OF s, j SKIP LOCKED),
                released AS (
                    UPDATE scheduled_messages s SET due_at = clock_timestamp()
                      FROM picked WHERE s.id = picked.id
                    RETURNING s.job_id, s.due_at),
                marked AS (
                    UPDATE jobs SET next_attempt_at = r.due_at, updated_at = GREATEST(jobs.updated_at + interval '1 microsecond', {now})
                      FROM (SELECT job_id, max(due_at) AS due_at FROM released GROUP BY job_id) r
                     WHERE jobs.id = r.job_id
                    RETURNING jobs.id)
                SELECT (SELECT count(*)::int FROM marked) AS released,
                       (SELECT count(DISTINCT j.id)::int
                          FROM jobs j JOIN scheduled_messages s ON s.job_id = j.id
                         WHERE j.kind = {kind} AND j.status = {status} AND s.due_at > clock_timestamp()
                           AND NOT EXISTS (SELECT 1 FROM released r WHERE r.job_id = j.id)) AS still_waiting,
                       (SELECT min(due_at) FROM released) AS due_at
                """).ToListAsync(CancellationToken.None));
            var result = counts.Single();
            if (result.DueAt is { } dueAt)
            {
                // One wake-up for them all: every dispatcher reads every due row when it wakes.
                await NotifyDispatchersAsync(statements, dueAt);
            }

            return new JobsRunNow(kind, status, result.Released, result.StillWaiting);
        }, cancellationToken)
            // Rows held by others are passed over (SKIP LOCKED), so only a lock on a whole table (a migration) can make it
            // wait its lock_timeout out: nothing was released, and the database is busy rather than any job.
            ?? throw new NpgsqlException(
                $"The database held the jobs or their stored commands for more than {JobRowTransactions.LockWaitMilliseconds} ms: no {kind} job was made due now.");

        JobsLog.JobsRunNow(logger, summary.Kind, summary.Status, summary.Released, summary.StillWaiting);
        return new RunNowManyResult(summary);
    }

    internal sealed record ReleasedCounts(int Released, int StillWaiting, DateTimeOffset? DueAt);

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
            await NotifyDispatchersAsync(statements, dueAt);
            job = await statements.Answered(
                db.Jobs.AsNoTracking().WithoutRequestBody().FirstAsync(j => j.Id == jobId, CancellationToken.None));
        }

        JobsLog.JobRunNow(logger, job.Id, job.Kind, job.Status, released.Count);
        return new RunNowResult(RunNowStatus.Due, job, released.Count);
    }

    /// <summary>
    /// Wakes the dispatchers (delivered when the transaction commits); the payload is the due time in Unix milliseconds, as
    /// the worker's store sends it.
    /// </summary>
    private static Task<int> NotifyDispatchersAsync(JobRowTransactions.Statements statements, DateTimeOffset dueAt) =>
        statements.Answered(statements.Db.Database.ExecuteSqlInterpolatedAsync(
            $"SELECT pg_notify({ScheduledJobs.NotifyChannel}, {dueAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture)})",
            CancellationToken.None));
}
