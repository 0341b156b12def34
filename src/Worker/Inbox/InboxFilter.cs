using Conveyor.Storage;
using Conveyor.Worker.Jobs;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// The inbox of DESIGN.md: one transaction per message. The inbox row, the consumer's EF writes
/// and the job's success commit together; a duplicate finds the row and is acked unapplied; any
/// exception rolls the inbox row and the consumer's writes back (to a savepoint after the job's
/// claim, so the failed attempt is recorded in the same transaction, under the job row's lock) and
/// leaves the message to retry, redelivery or <c>_error</c>. A job without a row (published directly) gets
/// one first, committed on its own before the consumer runs (ADR 0013, <see cref="JobTracker.CreateRowAsync"/>).
/// Resolved from the message scope, so it shares the scoped <see cref="ConveyorDbContext"/> with the consumer.
/// A COMMIT whose answer was lost (the connection broke after the server applied it) is asked after on a connection
/// of its own (<see cref="CommitOutcome"/>) and, committed, settled as the success it was (ADR 0004).
/// </summary>
public sealed partial class InboxFilter<T>(
    ConveyorDbContext db,
    IDbContextFactory<ConveyorDbContext> dbFactory,
    JobTracker tracker,
    JobMetrics metrics,
    TimeProvider time,
    IServiceProvider services,
    ILogger<InboxFilter<T>> logger) : IFilter<ConsumeContext<T>>
    where T : class
{
    private const string AttemptSavepoint = "attempt";

    public async Task Send(ConsumeContext<T> context, IPipe<ConsumeContext<T>> next)
    {
        var cancellationToken = context.CancellationToken;
        var descriptor = services.GetService<JobDescriptor<T>>();
        var consumerId = InboxKeys.ConsumerIdOf(context);
        var messageKey = descriptor?.BusinessKey(context.Message) ?? InboxKeys.FallbackKey(context);
        JobRef? job = descriptor is null ? null : new JobRef(descriptor.Kind, messageKey, InboxKeys.ClaimedJobIdOf(context));

        // All or nothing: a savepoint around each SaveChanges would only cost two round trips.
        db.Database.AutoSavepointsEnabled = false;
        var fingerprint = PayloadFingerprint.Of(context.Message);
        var (begun, claim, jobId, attempt, jobConflict, firstFingerprint, transactionId) = await BeginAndClaimAsync(
            consumerId, messageKey, context.MessageId, fingerprint, job, cancellationToken);
        await using var transaction = begun;
        if (jobConflict is not null)
        {
            // The job row was created for another command (the Api accepted that one): nothing of this one stays.
            await transaction.RollbackAsync(cancellationToken);
            throw InboxConflicts.Found(metrics, logger, consumerId, messageKey, context.MessageId, jobConflict, fingerprint);
        }

        if (claim == InboxClaim.Duplicate)
        {
            // A new statement, so it sees the row of a copy whose commit the claim waited for.
            var applied = await InboxConflicts.StoredFingerprintAsync(db, consumerId, messageKey, fingerprint, cancellationToken);
            await transaction.CommitAsync(cancellationToken);
            if (PayloadFingerprint.Conflicts(applied, fingerprint))
            {
                throw InboxConflicts.Found(metrics, logger, consumerId, messageKey, context.MessageId, applied, fingerprint);
            }

            LogDuplicate(consumerId, messageKey, context.MessageId);
            metrics.DuplicateSkipped(consumerId);
            await SettledByInbox.NotifyAsync(context, consumerId);
            return;
        }

        if (claim == InboxClaim.NotRunnable)
        {
            // Cancelled, or succeeded already: record the message as handled and do nothing. A cancelled job's
            // command delivered before may have started an attempt that left no trace: said so, with the inbox row.
            if (context.ReceiveContext.Redelivered)
            {
                await tracker.RecordCancelledRedeliveryAsync(db, job!.Value, context.MessageId, cancellationToken);
            }

            await transaction.CommitAsync(cancellationToken);
            LogNotRun(job!.Value.Kind, job.Value.BusinessKey);
            await SettledByInbox.NotifyAsync(context, consumerId);
            return;
        }

        job = job is { } running ? running with { JobId = jobId, Attempt = attempt } : null;
        if (job is not null)
        {
            ClaimedAttempt.Set(context, attempt);
            ClaimedFingerprints.Set(context, fingerprint, firstFingerprint);
            // The claim holds the job row's lock: a failed attempt is recorded before it is released.
            await transaction.CreateSavepointAsync(AttemptSavepoint, cancellationToken);
        }

        var startedAt = job is { } starting ? metrics.AttemptStarted(starting, context, time) : time.GetTimestamp();
        using var logScope = JobLogScope.Begin(logger, job, context);

        try
        {
            await next.Send(context);
            // The consumer's effects happened (an HTTP call cannot be taken back): a shutdown from here on
            // must not roll their record back, or the next delivery would apply them again. The statement
            // timeout bounds the wait.
            if (job is { } succeeded)
            {
                await tracker.MarkSucceededAsync(db, succeeded, CancellationToken.None);
            }

            await db.SaveChangesAsync(CancellationToken.None);
            // A COMMIT whose answer was lost but which the server applied is the success it was: thrown as a failure,
            // the attempt counted as failed and not as a success, and its retry was acked as a duplicate.
            if (await CommitOutcome.CommitAsync(transaction, dbFactory, transactionId, CancellationToken.None) is { } answerLost)
            {
                LogCommitAnswerLost(answerLost, consumerId, messageKey);
            }
            if (job is { } done)
            {
                metrics.Succeeded(done.Kind, time.GetElapsedTime(startedAt));
            }
        }
        catch (Exception exception)
        {
            var stopping = exception is OperationCanceledException && cancellationToken.IsCancellationRequested;
            if (job is { } failed)
            {
                // A shutdown's too: the consumer ran and may have had its effect (a charge made before its
                // answer was cut off), so the claim's count and an error stay, and a cancel is refused. Rolled
                // back, the job read as never started; JobOutcomeFilter's write then found no such attempt.
                if (!stopping)
                {
                    metrics.AttemptFailed(failed.Kind);
                }

                if (!await RecordFailureInTransactionAsync(transaction, transactionId, consumerId, messageKey, failed, exception))
                {
                    // The attempt's count went with the rollback; a cancel may get in before this (the job is then flagged instead).
                    await RollBackQuietlyAsync(transaction);
                    ClaimedAttempt.Set(context, await RecordFailureQuietlyAsync(failed, exception, context.MessageId));
                }
            }
            else
            {
                await RollBackQuietlyAsync(transaction);
            }

            throw;
        }
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-inbox");

    /// <summary>
    /// Begins the inbox transaction and claims the message in it. A concurrent copy blocks on the first one's
    /// uncommitted key, then sees the conflict (the first committed) or inserts (the first rolled back).
    /// </summary>
    /// <remarks>
    /// The job's row is not left for the inbox transaction to create: it would commit only with the consumer's outcome, up
    /// to its timeout later, and a client polling <c>GET /api/jobs?order=oldest</c> had passed its place by then and
    /// never got the job (ADR 0013). It is created first, committed on its own (<see cref="JobTracker.CreateRowAsync"/>),
    /// and the claim then finds it as it finds a row the Api created. A message that claims no job id is not the Api's
    /// (the Api names its job in every command it publishes): most likely the first delivery of a command another
    /// service published directly, so its row is created before the transaction begins (one round trip; nothing is
    /// written when the row exists). A message that claims one is claimed at once, in one round trip as before;
    /// should that claim create the row after all (a direct publisher that names the id it wants), it is rolled back,
    /// the row created, and the message claimed again in a new transaction.
    /// </remarks>
    private async Task<(IDbContextTransaction Transaction, InboxClaim Claim, Guid? JobId, int? Attempt, byte[]? JobConflict, byte[]? FirstFingerprint, string? TransactionId)> BeginAndClaimAsync(
        string consumerId, string messageKey, Guid? messageId, byte[]? fingerprint, JobRef? job, CancellationToken cancellationToken)
    {
        if (job is { JobId: null } unnamed)
        {
            await tracker.CreateRowAsync(unnamed, fingerprint, cancellationToken);
        }

        var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        try
        {
            if (job is not { } claimed)
            {
                // No transaction id: a lost COMMIT answer of a message that is no job still takes the failure path.
                return (transaction, await InsertInboxRowAsync(consumerId, messageKey, messageId, fingerprint, cancellationToken), null, null, null, null, null);
            }

            var found = await tracker.ClaimInTransactionAsync(db, consumerId, messageKey, messageId, fingerprint, claimed, cancellationToken);
            if (found.CreatedJobRow)
            {
                await transaction.RollbackAsync(cancellationToken);
                await transaction.DisposeAsync();
                await tracker.CreateRowAsync(claimed, fingerprint, cancellationToken);
                transaction = await db.Database.BeginTransactionAsync(cancellationToken);
                // Once only: a row gone again by now is created by this claim, as before.
                found = await tracker.ClaimInTransactionAsync(db, consumerId, messageKey, messageId, fingerprint, claimed, cancellationToken);
            }

            return (transaction, found.Claim, found.JobId, found.Attempt, found.JobConflict, found.FirstFingerprint, found.TransactionId);
        }
        catch
        {
            await transaction.DisposeAsync();
            throw;
        }
    }

    private async Task<InboxClaim> InsertInboxRowAsync(string consumerId, string messageKey, Guid? messageId, byte[]? fingerprint, CancellationToken cancellationToken)
    {
        var now = time.GetUtcNow();
        var inserted = await db.Database.ExecuteSqlInterpolatedAsync($"""
            INSERT INTO inbox (consumer_id, message_key, message_id, received_at, payload_hash)
            VALUES ({consumerId}, {messageKey}, {messageId}, {now}, {fingerprint})
            ON CONFLICT DO NOTHING
            """, cancellationToken);
        return inserted == 0 ? InboxClaim.Duplicate : InboxClaim.Run;
    }

    /// <summary>
    /// Undoes the consumer's writes and the inbox row but keeps the claim's count and lock, records
    /// the error and commits (<see cref="JobTracker.RecordFailedAttemptInTransactionAsync"/>). False
    /// when that failed (the connection broke): the caller rolls back and records it afresh. A COMMIT that fails
    /// is asked after (<see cref="CommitOutcome"/>): applied, its answer lost with the connection, the failure is
    /// recorded, where recorded afresh the attempt counted twice.
    /// </summary>
    private async Task<bool> RecordFailureInTransactionAsync(
        IDbContextTransaction transaction, string? transactionId, string consumerId, string messageKey, JobRef job, Exception failure)
    {
        try
        {
            db.ChangeTracker.Clear();
            await transaction.RollbackToSavepointAsync(AttemptSavepoint, CancellationToken.None);
            await tracker.RecordFailedAttemptInTransactionAsync(db, consumerId, messageKey, job.JobId!.Value, failure, CancellationToken.None);
            if (await CommitOutcome.CommitAsync(transaction, dbFactory, transactionId, CancellationToken.None) is { } answerLost)
            {
                LogCommitAnswerLost(answerLost, consumerId, messageKey);
            }

            return true;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            LogFailureNotRecordedInTransaction(exception, job.Kind, job.BusinessKey);
            return false;
        }
    }

    private async Task RollBackQuietlyAsync(IDbContextTransaction transaction)
    {
        try
        {
            await transaction.RollbackAsync(CancellationToken.None);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The connection may be gone; PostgreSQL rolls back an abandoned transaction itself.
            LogRollbackFailed(exception);
        }
    }

    /// <summary>The attempt counted afresh; null when it could not be.</summary>
    private async Task<int?> RecordFailureQuietlyAsync(JobRef job, Exception failure, Guid? messageId)
    {
        try
        {
            return await tracker.RecordAttemptFailureAsync(job with { Attempt = null }, failure, countAttempt: true, messageId, CancellationToken.None);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            LogStatusWriteFailed(exception, job.Kind, job.BusinessKey);
            return null;
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Duplicate skipped by the inbox: consumer {ConsumerId}, key {MessageKey}, message {MessageId}")]
    private partial void LogDuplicate(string consumerId, string messageKey, Guid? messageId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {Kind}/{BusinessKey} is cancelled or already succeeded; the message is acked without running it")]
    private partial void LogNotRun(string kind, string businessKey);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The inbox transaction of consumer {ConsumerId}, key {MessageKey} got no answer to its commit, which the database applied; the message is settled as committed")]
    private partial void LogCommitAnswerLost(Exception exception, string consumerId, string messageKey);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Rolling back the inbox transaction failed")]
    private partial void LogRollbackFailed(Exception exception);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not record the failure of job {Kind}/{BusinessKey} in its inbox transaction; recording it after the rollback")]
    private partial void LogFailureNotRecordedInTransaction(Exception exception, string kind, string businessKey);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not record the failure of job {Kind}/{BusinessKey}")]
    private partial void LogStatusWriteFailed(Exception exception, string kind, string businessKey);
}
