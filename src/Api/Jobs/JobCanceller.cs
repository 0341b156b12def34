using System.Globalization;
using Conveyor.Api.Hosting;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Npgsql;

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
    /// (the dispatcher publishing it) longer than <see cref="JobCanceller.LockWaitMilliseconds"/>: nothing changed.
    /// </summary>
    Busy,
}

internal readonly record struct CancelResult(CancelStatus Status, Job? Job = null);

/// <summary>
/// Cancels a job that has not started. The status changes only from <c>queued</c> or <c>scheduled</c>,
/// in one UPDATE, so it cannot race a worker starting the job: whichever writes the row first wins,
/// and a worker that receives a cancelled job's message acks it without running it. A job back in
/// <c>queued</c> after a worker shutdown cut an attempt short (it carries that attempt's error) has
/// started: the attempt may have had its effect outside (a charge at the gateway), which only running
/// the job again settles, so it is not cancelled. A scheduled
/// job's stored command is deleted in the same transaction; if the dispatcher holds it at that
/// moment, the cancel waits for it: it is published anyway and the worker skips it.
/// A worker holds the job's row for as long as an attempt runs (the claim is in its inbox transaction),
/// so the cancel waits for either lock at most <see cref="LockWaitMilliseconds"/>, and then answers
/// <see cref="CancelStatus.Busy"/> instead of holding the request and a connection until the
/// statement timeout (which the Api answered as an unreachable database).
/// The transaction holds those rows, so it runs on a session of its own that ends with the cancel: its
/// statements get no token for Npgsql and are waited for at most <see cref="AnswerTimeout"/> (then a 503),
/// and a cancel that stops early (the request aborted, the server not answering) closes the session, which
/// rolls the transaction back on the server, instead of waiting for the server to answer a cancel request
/// or a rollback (<see cref="HeldSessions"/>). The server ends the session itself when the Api falls silent
/// inside the transaction for as long (a close that does not reach it, a process that vanished).
/// </summary>
internal sealed class JobCanceller(IConfiguration configuration, TimeProvider clock, ILogger<JobCanceller> logger)
{
    /// <summary>
    /// How long a cancel waits for a row another transaction holds: a dispatch's confirm or a group
    /// commit ends well within it; an attempt that runs longer has most likely started the job.
    /// </summary>
    public const int LockWaitMilliseconds = 5000;

    /// <summary>
    /// How long a statement of the cancel may go unanswered, one that waits its whole <see cref="LockWaitMilliseconds"/>
    /// included, and how long the server lets the cancel's transaction wait for the Api's next statement.
    /// </summary>
    internal static readonly TimeSpan AnswerTimeout = TimeSpan.FromMilliseconds(LockWaitMilliseconds) + TimeSpan.FromSeconds(5);

    private const string What = "a job's cancel";

    /// <summary>The contexts' connection string, unpooled: closing the connection ends the session (and its transaction).</summary>
    private readonly string _connectionString = new NpgsqlConnectionStringBuilder(
        StorageServiceCollectionExtensions.ForContexts(StorageServiceCollectionExtensions.ConnectionString(configuration)))
    {
        Pooling = false,
    }.ConnectionString;

    public async Task<CancelResult> CancelAsync(Guid jobId, CancellationToken cancellationToken)
    {
        var connection = new NpgsqlConnection(_connectionString);
        var db = new ConveyorDbContext(StorageServiceCollectionExtensions.On(connection));
        try
        {
            await connection.OpenAsync(cancellationToken);
            var result = await CancelOnAsync(db, jobId, cancellationToken);
            await connection.DisposeAsync();
            return result;
        }
        catch (Exception exception)
        {
            // Never a rollback, which would wait for the server: the transaction ends with the session.
            await HeldSessions.CloseAsync(connection);
            if (DatabaseFailures.IsLockNotAvailable(exception))
            {
                // The transaction rolled back: the job is as it was.
                return new CancelResult(CancelStatus.Busy);
            }

            throw;
        }
        finally
        {
            // After the close: the context's transaction, if still open, is let go without a word to the server.
            await db.DisposeAsync();
        }
    }

    private async Task<CancelResult> CancelOnAsync(ConveyorDbContext db, Guid jobId, CancellationToken cancellationToken)
    {
        await db.Database.BeginTransactionAsync(cancellationToken);
        // The transaction's own settings (is_local), which end with it.
        var wait = ((long)AnswerTimeout.TotalMilliseconds).ToString(CultureInfo.InvariantCulture);
        await AnsweredAsync(db.Database.ExecuteSqlInterpolatedAsync(
            $"""
            SELECT set_config('lock_timeout', {LockWaitMilliseconds.ToString(CultureInfo.InvariantCulture)}, true),
                   set_config('idle_in_transaction_session_timeout', {wait}, true)
            """, CancellationToken.None), cancellationToken);
        // The dispatcher locks a stored command's row, then, when its publish fails, writes the job's row.
        // Taken in that order here too, a cancel waits for a dispatch under way to end; updating the job
        // first, the two waited for each other and PostgreSQL aborted one (a 500, or a dispatch redone).
        var dedupeKey = ScheduledJobs.DedupeKey(jobId);
        await AnsweredAsync(db.Database.ExecuteSqlInterpolatedAsync(
            $"SELECT 1 FROM scheduled_messages WHERE dedupe_key = {dedupeKey} FOR UPDATE", CancellationToken.None), cancellationToken);
        var now = clock.GetUtcNow();
        var cancelled = await AnsweredAsync(db.Jobs
            .Where(j => j.Id == jobId
                && ((j.Status == JobStatus.Queued && j.Attempts == 0 && j.LastError == null) || j.Status == JobStatus.Scheduled))
            .ExecuteUpdateAsync(
                set => set
                    .SetProperty(j => j.Status, JobStatus.Cancelled)
                    .SetProperty(j => j.NextAttemptAt, (DateTimeOffset?)null)
                    .SetProperty(j => j.UpdatedAt, now)
                    .SetProperty(j => j.FinishedAt, now)
                    .SetProperty(j => j.RequestBody, (byte[]?)null), // nothing will publish it again
                CancellationToken.None), cancellationToken);
        if (cancelled == 1)
        {
            await AnsweredAsync(
                db.ScheduledMessages.Where(s => s.DedupeKey == dedupeKey).ExecuteDeleteAsync(CancellationToken.None), cancellationToken);
        }

        var job = await AnsweredAsync(
            db.Jobs.AsNoTracking().WithoutRequestBody().FirstOrDefaultAsync(j => j.Id == jobId, CancellationToken.None), cancellationToken);
        await AnsweredAsync(db.Database.CommitTransactionAsync(CancellationToken.None), cancellationToken);

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

    /// <summary>A statement of the cancel, started without a token for Npgsql, waited for at most <see cref="AnswerTimeout"/>.</summary>
    private static Task AnsweredAsync(Task statement, CancellationToken cancellationToken) =>
        HeldSessions.WaitForRequestAsync(statement, AnswerTimeout, What, cancellationToken);

    /// <inheritdoc cref="AnsweredAsync(Task, CancellationToken)"/>
    private static Task<T> AnsweredAsync<T>(Task<T> statement, CancellationToken cancellationToken) =>
        HeldSessions.WaitForRequestAsync(statement, AnswerTimeout, What, cancellationToken);
}
