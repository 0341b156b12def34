using Conveyor.Storage;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Messaging;
using MassTransit;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Inbox;

/// <summary>
/// The inbox with group commit (<see cref="InboxBatcher"/>): the message joins the endpoint's next
/// batch, runs its consumer only if the batch's statement inserted its inbox row and claimed its
/// job, and is acked only after the batch committed. The consumer stages its writes as inserts in
/// the scoped <see cref="ConveyorDbContext"/> (it must not run commands itself); the batch applies them.
/// </summary>
public sealed partial class BatchedInboxFilter<T>(
    ConveyorDbContext db,
    JobTracker tracker,
    JobMetrics metrics,
    InboxBatchers batchers,
    TimeProvider time,
    IServiceProvider services,
    ILogger<BatchedInboxFilter<T>> logger) : IFilter<ConsumeContext<T>>
    where T : class
{
    public async Task Send(ConsumeContext<T> context, IPipe<ConsumeContext<T>> next)
    {
        var descriptor = services.GetRequiredService<JobDescriptor<T>>();
        var consumerId = InboxKeys.ConsumerIdOf(context);
        var job = new JobRef(descriptor.Kind, descriptor.BusinessKey(context.Message), InboxKeys.ClaimedJobIdOf(context));
        var batcher = batchers.For(consumerId, descriptor);
        var member = batcher.Join(job.BusinessKey, context.MessageId, job.JobId, PayloadFingerprint.Of(context.Message));

        switch (await member.Claimed)
        {
            case InboxClaim.Duplicate when member.ConflictingFingerprint is { } applied:
                throw InboxConflicts.Found(metrics, logger, consumerId, job.BusinessKey, context.MessageId, applied, member.Fingerprint);
            case InboxClaim.DuplicateInBatch when member.DiffersFromCopyInBatch:
                // Which of the two is applied depends on whether the one that runs succeeds: this one
                // claims again on its own after a retry's pause (its claim waits for that batch).
                throw new TransientFailureException(
                    $"Another message with key '{job.BusinessKey}' and other content runs in this inbox batch; this one is tried again after it");
            case InboxClaim.Duplicate:
                LogDuplicate(consumerId, job.BusinessKey, context.MessageId);
                metrics.DuplicateSkipped(consumerId);
                await SettledByInbox.NotifyAsync(context, consumerId);
                return;
            case InboxClaim.DuplicateInBatch:
                await ThrowUnlessCommittedAsync(member, consumerId, job, context.MessageId);
                LogDuplicate(consumerId, job.BusinessKey, context.MessageId);
                metrics.DuplicateSkipped(consumerId);
                await SettledByInbox.NotifyAsync(context, consumerId);
                return;
            case InboxClaim.NotRunnable:
                await ThrowUnlessCommittedAsync(member, consumerId, job, context.MessageId);
                LogNotRun(job.Kind, job.BusinessKey);
                if (context.ReceiveContext.Redelivered)
                {
                    await RecordCancelledRedeliveryQuietlyAsync(job, context.MessageId);
                }

                await SettledByInbox.NotifyAsync(context, consumerId);
                return;
        }

        job = job with { JobId = member.JobId, Attempt = member.Attempt };
        ClaimedAttempt.Set(context, member.Attempt);
        ClaimedFingerprints.Set(context, member.Fingerprint, member.FirstFingerprint);
        var startedAt = metrics.AttemptStarted(job, context, time);
        using var logScope = new JobLogScope.Switchable(logger, job, context);
        try
        {
            await next.Send(context);
            member.RanSuccessfully(TakeStagedInserts());
        }
        catch (Exception exception)
        {
            member.RanAndFailed();
            db.ChangeTracker.Clear();
            // The batch removes this message's inbox row; its attempt stays counted if the batch commits.
            var committed = await member.Completed;
            job = logScope.Follow(member.JobId);
            var stopping = exception is OperationCanceledException && context.CancellationToken.IsCancellationRequested;
            // A shutdown's attempt is recorded too when its batch's count rolled back: it may have had its
            // effect, so the job must not read as never started (a cancel would then be allowed).
            if (!stopping || !committed)
            {
                if (!stopping)
                {
                    metrics.AttemptFailed(job.Kind);
                }

                ClaimedAttempt.Set(context, await RecordFailureQuietlyAsync(job, exception, countAttempt: !committed, context.MessageId));
            }

            throw;
        }

        var completed = await member.Completed;
        job = logScope.Follow(member.JobId);
        if (!completed)
        {
            if (member.ConflictingFingerprint is { } applied)
            {
                // Settled again alone after its batch failed, it found its key taken by another command
                // meanwhile: its effects are dropped, and the job (the other command's) is not touched.
                throw InboxConflicts.Found(metrics, logger, consumerId, job.BusinessKey, context.MessageId, applied, member.Fingerprint);
            }

            // The consumer succeeded but its effects did not commit: a failed attempt, counted here
            // (and a row for the job created, if this attempt was creating it) unless the batch
            // counted it under the job row's lock.
            metrics.AttemptFailed(job.Kind);
            ClaimedAttempt.Set(context, await RecordFailureQuietlyAsync(
                job, member.BatchFailure ?? new InboxBatchFailedException(null), countAttempt: !member.AttemptRecorded, context.MessageId));
            throw new InboxBatchFailedException(member.BatchFailure);
        }

        BatchedInboxOutcome.Count(metrics, logger, consumerId, job, context.MessageId, member, time.GetElapsedTime(startedAt));
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-inbox-batched");

    private async Task ThrowUnlessCommittedAsync(BatchMember member, string consumerId, JobRef job, Guid? messageId)
    {
        if (!await member.Completed)
        {
            throw member.ConflictingFingerprint is { } applied
                ? InboxConflicts.Found(metrics, logger, consumerId, job.BusinessKey, messageId, applied, member.Fingerprint)
                : new InboxBatchFailedException(member.BatchFailure);
        }
    }

    private List<object> TakeStagedInserts()
    {
        var entries = db.ChangeTracker.Entries().ToList();
        var other = entries.FirstOrDefault(e => e.State is not (EntityState.Added or EntityState.Unchanged or EntityState.Detached));
        if (other is not null)
        {
            throw new InvalidOperationException(
                $"A consumer on the batched inbox may only add entities; {other.Metadata.ClrType.Name} was {other.State}.");
        }

        var staged = entries.Where(e => e.State == EntityState.Added).Select(e => e.Entity).ToList();
        db.ChangeTracker.Clear();
        return staged;
    }

    /// <summary>
    /// The attempt the failure is recorded under: the batch's (its count committed) or one counted afresh
    /// (the batch's count rolled back); null when that could not be counted.
    /// </summary>
    private async Task<int?> RecordFailureQuietlyAsync(JobRef job, Exception failure, bool countAttempt, Guid? messageId)
    {
        try
        {
            return await tracker.RecordAttemptFailureAsync(countAttempt ? job with { Attempt = null } : job, failure, countAttempt, messageId, CancellationToken.None);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            LogStatusWriteFailed(exception, job.Kind, job.BusinessKey);
            return countAttempt ? null : job.Attempt;
        }
    }

    /// <summary>
    /// A cancelled job's command delivered before may have started an attempt that left no trace (its batch rolled
    /// back with the worker): <see cref="JobTracker.RecordCancelledRedeliveryAsync(JobRef, Guid?, CancellationToken)"/>.
    /// Written once the batch committed (its claim holds the job rows' locks until then), so the message is settled
    /// already: a failure is logged, not thrown, since the retry would be acked as a duplicate without writing it.
    /// </summary>
    private async Task RecordCancelledRedeliveryQuietlyAsync(JobRef job, Guid? messageId)
    {
        try
        {
            await tracker.RecordCancelledRedeliveryAsync(job, messageId, CancellationToken.None);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            LogCancelledRedeliveryNotRecorded(exception, job.Kind, job.BusinessKey, messageId);
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Duplicate skipped by the inbox: consumer {ConsumerId}, key {MessageKey}, message {MessageId}")]
    private partial void LogDuplicate(string consumerId, string messageKey, Guid? messageId);

    [LoggerMessage(Level = LogLevel.Information, Message = "Job {Kind}/{BusinessKey} is cancelled or already succeeded; the message is acked without running it")]
    private partial void LogNotRun(string kind, string businessKey);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not record the failure of job {Kind}/{BusinessKey}")]
    private partial void LogStatusWriteFailed(Exception exception, string kind, string businessKey);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Job {Kind}/{BusinessKey} is cancelled or already succeeded and its command (message {MessageId}) came back redelivered, but whether it is cancelled could not be read or recorded: if it is, an earlier delivery may have started an attempt before the cancel")]
    private partial void LogCancelledRedeliveryNotRecorded(Exception exception, string kind, string businessKey, Guid? messageId);
}

/// <summary>What a message whose consumer succeeded and whose batch (or own settlement) committed counts in <see cref="JobMetrics"/>.</summary>
internal static partial class BatchedInboxOutcome
{
    /// <summary>
    /// By its <see cref="BatchMember.Settlement"/>: applied, a success with its attempt's duration. Settled alone after its
    /// batch failed, and found applied by another copy meanwhile, a duplicate (its effects were dropped, and that copy counted
    /// the job's success), logged and counted like one acked unrun. Found cancelled, neither a success (its effects were dropped
    /// and the job reads <c>cancelled</c>) nor a failed attempt (its consumer did not fail): the warning and the job's
    /// <c>lastError</c> say what happened.
    /// </summary>
    public static void Count(JobMetrics metrics, ILogger logger, string consumerId, JobRef job, Guid? messageId, BatchMember member, TimeSpan duration)
    {
        switch (member.Settlement)
        {
            case BatchSettlement.Applied:
                metrics.Succeeded(job.Kind, duration);
                break;
            case BatchSettlement.AlreadySettled:
                LogDroppedAsDuplicate(logger, consumerId, job.BusinessKey, messageId);
                metrics.DuplicateSkipped(consumerId);
                break;
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Duplicate skipped by the inbox: consumer {ConsumerId}, key {MessageKey}, message {MessageId}; its consumer ran in an inbox batch that failed, and another copy was applied before it was settled again alone, so its effects were dropped")]
    private static partial void LogDroppedAsDuplicate(ILogger logger, string consumerId, string messageKey, Guid? messageId);
}

/// <summary>
/// The inbox batch this message was in did not commit. The inner exception is why; it decides whether
/// the message is tried again (<see cref="Failures.FailureClassifier"/>). After a batch that failed with
/// more than one message waiting for it, each of them is settled again alone, so the inner exception of
/// a message that still fails is its own; none means it is to be tried again.
/// </summary>
public sealed class InboxBatchFailedException(Exception? inner)
    : Exception("The inbox batch this message was in did not commit", inner);

/// <summary>One <see cref="InboxBatcher"/> per endpoint, sized from its <see cref="ConsumerEndpointOptions"/>.</summary>
public sealed class InboxBatchers(
    IDbContextFactory<ConveyorDbContext> dbFactory,
    TimeProvider time,
    Microsoft.Extensions.Options.IOptionsMonitor<ConsumerEndpointOptions> options,
    ILoggerFactory loggers) : IAsyncDisposable
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, Lazy<InboxBatcher>> _batchers = new(StringComparer.Ordinal);

    public InboxBatcher For<T>(string consumerId, JobDescriptor<T> descriptor) where T : class =>
        _batchers.GetOrAdd(consumerId, id => new Lazy<InboxBatcher>(() =>
        {
            var endpoint = options.Get(descriptor.ConsumerName);
            return new InboxBatcher(id, descriptor.Kind, endpoint.InboxBatchSize, endpoint.InboxConcurrentBatches, endpoint.InboxEagerBatches,
                dbFactory, time, loggers.CreateLogger<InboxBatcher>()) { GenericPlans = endpoint.InboxGenericPlans };
        })).Value;

    public async ValueTask DisposeAsync()
    {
        foreach (var batcher in _batchers.Values.Where(b => b.IsValueCreated))
        {
            await batcher.Value.DisposeAsync();
        }
    }
}
