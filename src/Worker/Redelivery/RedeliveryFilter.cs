using System.Globalization;
using Conveyor.Storage;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using MassTransit;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Sits outside the in-memory retry. A transient failure that outlived those retries is stored
/// for a delayed redelivery (if the policy allows another) and the original is acked; anything
/// else passes on towards <c>_error</c>. A copy's redeliveries so far are counted only from headers
/// the worker sealed (<see cref="RedeliverySeal"/>), never from what a sender put there.
/// </summary>
public sealed partial class RedeliveryFilter<T>(
    RedeliveryStore store,
    RedeliverySeal seal,
    RedeliveryPolicy policy,
    JobTracker tracker,
    JobMetrics metrics,
    JobDescriptor<T> descriptor,
    IConsumeObserver? faultObserver,
    TimeProvider time,
    ILogger logger) : IFilter<ConsumeContext>
    where T : class
{
    /// <summary>
    /// The waits before each new try of what an unreadable key ring kept from happening: checking a copy's seal
    /// (<see cref="SealCheckedAgainAsync"/>) or sealing a failed delivery's redelivery (<see cref="RedeliverAsync"/>).
    /// Under four seconds in all, the delivery unacked, far within RabbitMQ's consumer_timeout; long enough
    /// that a blip of the database passes without the delivery going round its queue.
    /// </summary>
    private static readonly TimeSpan[] KeyRingWaits =
        [TimeSpan.FromMilliseconds(250), TimeSpan.FromMilliseconds(500), TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2)];

    public async Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        var attempts = new FaultHoldingConsumeContext(context);
        context.AddOrUpdatePayload(() => attempts, _ => attempts);
        // Called from the retry filter's exception filter, where a throw would be swallowed: a seal that
        // could not be checked allows nothing here; it is read again below, and the delivery requeued if
        // it still cannot be.
        context.GetOrAddPayload(() => new RedeliveryAhead(() => SealUncheckedOf(context) is null && policy.Allows(HistoryOf(context).Attempt + 1)));
        try
        {
            await next.Send(attempts);
        }
        catch (Exception exception) when (DatabaseFailures.IsUnavailable(exception))
        {
            await attempts.RecordHeldAsync();
            // The failure is the worker's own database, not the job: the attempt decided nothing.
            // Storing a redelivery would need that same database, and _error would lose the job
            // for an outage, so the message goes back to its queue with its budget untouched
            // (the kill switch pauses the endpoint while the outage lasts).
            throw new RequeueRequestedException("The database is unavailable; the message goes back to its queue", exception);
        }
        catch (Exception exception) when (SealUncheckedOf(context) is { } unreadableSeal && context.TryGetMessage<T>(out var typed))
        {
            // The copy's seal could not be checked (the key ring is in the same database, which did not
            // answer): counted as a first delivery, a genuine copy would start its redeliveries and its first
            // failure time afresh, and the _error copy would say so. Given back at once, it would be delivered
            // again at once, for as long as the ring stays unreadable: the seal is read again here first.
            if (await SealCheckedAgainAsync(context, unreadableSeal) is { } unreadable)
            {
                await attempts.RecordHeldAsync();
                LogSealUnchecked(InboxKeys.ConsumerIdOf(context), descriptor.BusinessKey(typed.Message), unreadable.Message);
                throw new RequeueRequestedException("The redelivery seal could not be checked; the message goes back to its queue", unreadable);
            }

            // The ring answered in time: the delivery counts as if its seal had been read at once.
            if (!IsRedeliverable(context, exception, out var attempt))
            {
                await attempts.PublishHeldAsync();
                throw;
            }

            await RedeliverAsync(context, typed, attempts, exception, attempt);
        }
        catch (Exception exception) when (IsRedeliverable(context, exception, out var attempt))
        {
            if (!context.TryGetMessage<T>(out var typed))
            {
                await attempts.PublishHeldAsync();
                throw;
            }

            await RedeliverAsync(context, typed, attempts, exception, attempt);
        }
        catch (Exception)
        {
            // On its way to _error: now the fault is final, and its event is published once.
            await attempts.PublishHeldAsync();
            throw;
        }
    }

    /// <summary>
    /// Stores redelivery number <paramref name="attempt"/> of the failed delivery, sealed, and tells the
    /// kill switch; the original is acked when this returns. Requeues it when the store or the seal cannot
    /// be written (the seal only after a few seconds' tries: see <see cref="KeyRingWaits"/>).
    /// </summary>
    private async Task RedeliverAsync(ConsumeContext context, ConsumeContext<T> typed, FaultHoldingConsumeContext attempts, Exception exception, int attempt)
    {
        var now = time.GetUtcNow();
        var retryAfter = (exception as TransientFailureException)?.RetryAfter;
        var delay = policy.DelayFor(attempt, retryAfter, Random.Shared.NextDouble());
        var consumerId = InboxKeys.ConsumerIdOf(context);
        var key = descriptor.BusinessKey(typed.Message);
        var firstFailureAt = HistoryOf(context).FirstFailureAt ?? now.ToString("O", CultureInfo.InvariantCulture);
        string? sealedHeaders = null;
        Exception? SealOnce()
        {
            try
            {
                sealedHeaders = seal.Seal(consumerId, key, attempt, firstFailureAt);
                return null;
            }
            catch (Exception sealFailure) when (sealFailure is not OutOfMemoryException)
            {
                return sealFailure;
            }
        }

        // The key ring lives in the same database (it may be away, or unreadable): without a seal the copy
        // would count as a first delivery, and redeliver forever, so the delivery goes back to its queue.
        // Given back at once, it would be delivered again at once (the gateway asked each time) for as long
        // as the ring stays unreadable: it is sealed again here first.
        if (SealOnce() is { } unsealed && await AgainWhileKeyRingUnreadableAsync(unsealed, SealOnce, context.CancellationToken) is { } unsealable)
        {
            await attempts.RecordHeldAsync();
            LogUnsealed(consumerId, key, attempt, unsealable.Message);
            throw new RequeueRequestedException("The redelivery headers could not be sealed; the message goes back to its queue", unsealable);
        }

        var headers = new Dictionary<string, string>
        {
            [RedeliveryHeaders.Attempt] = attempt.ToString(CultureInfo.InvariantCulture),
            [RedeliveryHeaders.FirstFailureAt] = firstFailureAt,
            // Set by the SealOnce that answered.
            [RedeliverySeal.Header] = sealedHeaders!,
            [RedeliveryHeaders.LastError] = JobTracker.Describe(exception, 500),
        };

        // Stored (committed) before this method returns and MassTransit acks the original, with the
        // job's status in the same transaction (see the store's markWaiting).
        var job = new JobRef(descriptor.Kind, key, InboxKeys.ClaimedJobIdOf(context), ClaimedAttempt.Of(context));
        ScheduledCopy scheduled;
        try
        {
            scheduled = await store.ScheduleAsync(context.ReceiveContext, context.MessageId, consumerId,
                DedupeKey(consumerId, key, FingerprintOf(context, typed.Message), attempt),
                attempt, delay, headers, job, policy.MaxHeaderBytes,
                (db, due) => tracker.MarkRetryScheduledAsync(db, job, exception, due, CancellationToken.None), CancellationToken.None);
        }
        catch (Exception storeFailure) when (DatabaseFailures.IsUnavailable(storeFailure) || FailureClassifier.IsTransient(storeFailure))
        {
            // Away, or busy (a statement timeout, a deadlock): no reason to give the job up for good.
            await attempts.RecordHeldAsync();
            throw new RequeueRequestedException("The redelivery store is unavailable; the message goes back to its queue", storeFailure);
        }

        // A failure before any consumer ran (the inbox's claim: a deadlock, a statement timeout) holds no
        // fault: the received message is told here, or MassTransit would take it for one no consumer
        // takes and copy it to _skipped beside the stored redelivery.
        await attempts.RecordHeldAsync(whenNoneHeld: () =>
            context.ReceiveContext.NotifyFaulted(typed, TimeSpan.Zero, "conveyor-redelivery", exception));

        // Counted and logged as scheduled once per redelivery stored: a second copy of the command (a duplicate
        // publish) failing at the same count folds into the row stored first, and no second redelivery is scheduled.
        if (scheduled.Stored)
        {
            metrics.RetryScheduled(descriptor.Kind);
            LogScheduled(consumerId, key, attempt, policy.Limit, scheduled.DueAt, exception.Message);
        }
        else
        {
            LogJoined(consumerId, key, attempt, policy.Limit, scheduled.DueAt, exception.Message);
        }

        if (faultObserver is not null)
        {
            await faultObserver.ConsumeFault(typed, exception);
        }
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-redelivery");

    private bool IsRedeliverable(ConsumeContext context, Exception exception, out int attempt)
    {
        attempt = HistoryOf(context).Attempt + 1;
        var stopping = exception is OperationCanceledException && context.CancellationToken.IsCancellationRequested;
        return !stopping && FailureClassifier.IsTransient(exception) && policy.Allows(attempt);
    }

    /// <summary>
    /// What a redelivery is stored under. Copies of one command failing at the same redelivery count
    /// share it, so that one row stands for the job's latest attempt (<see cref="RedeliveryStore"/>). The
    /// command's fingerprint (ADR 0011) keeps another command under the same business key out of that
    /// row: a corrected command that took a dead-lettered job over can fail at the count of a row the
    /// first command left waiting, and folded into it, the correction would be acked with nothing stored
    /// and the first command's body redelivered in its place. A command without a fingerprint (none can
    /// be written for it) keeps the key without one. At most 33 characters more than before, within the
    /// column (business keys are ids).
    /// </summary>
    private static string DedupeKey(string consumerId, string businessKey, byte[]? fingerprint, int attempt) =>
        fingerprint is null
            ? $"{consumerId}:{businessKey}:redelivery:{attempt}"
            : $"{consumerId}:{businessKey}:redelivery:{Convert.ToHexStringLower(fingerprint)}:{attempt}";

    /// <summary>
    /// The command's fingerprint as the delivery's inbox claim computed it, or computed here where no claim
    /// did (the lease inbox, a failure before the claim): the same function over the same message.
    /// </summary>
    private static byte[]? FingerprintOf(ConsumeContext context, T message) =>
        ClaimedFingerprints.TryGet(context, out var claimed, out _) && claimed is not null
            ? claimed
            : PayloadFingerprint.Of(message);

    /// <summary>
    /// The copy's redeliveries so far, as far as its seal vouches for them; read once per delivery and
    /// kept on the receive context, where the error pipe takes the <c>_error</c> copy's headers from it.
    /// <see cref="RedeliveryHistory.None"/> when the seal could not be checked (<see cref="SealUncheckedOf"/>),
    /// which the caller rules out first.
    /// </summary>
    private RedeliveryHistory HistoryOf(ConsumeContext context) => CheckOf(context).History ?? RedeliveryHistory.None;

    /// <summary>Why the copy's seal could not be checked on this delivery, or null when it was (or there was none).</summary>
    private Exception? SealUncheckedOf(ConsumeContext context) => CheckOf(context).Unreadable;

    /// <summary>
    /// The seal is read once per delivery, a failure too, so that one delivery never counts one way and
    /// then the other; only <see cref="SealCheckedAgainAsync"/> reads it again, before the failure is acted on.
    /// </summary>
    private SealCheck CheckOf(ConsumeContext context) => context.ReceiveContext.GetOrAddPayload(() => ReadSeal(context));

    private SealCheck ReadSeal(ConsumeContext context)
    {
        if (!context.TryGetMessage<T>(out var typed))
        {
            return new SealCheck(context.ReceiveContext.GetOrAddPayload(() => RedeliveryHistory.None), null);
        }

        try
        {
            var history = seal.Read(context.ReceiveContext, InboxKeys.ConsumerIdOf(context), descriptor.BusinessKey(typed.Message));
            return new SealCheck(context.ReceiveContext.GetOrAddPayload(() => history), null);
        }
        catch (Exception exception) when (DatabaseFailures.IsDatabaseError(exception))
        {
            return new SealCheck(null, exception);
        }
    }

    /// <summary>
    /// Reads a seal that could not be checked again (<see cref="AgainWhileKeyRingUnreadableAsync"/>), and keeps
    /// each read's outcome on the receive context in place of the failed one. Returns why the seal still could
    /// not be checked, or null once it was.
    /// </summary>
    private Task<Exception?> SealCheckedAgainAsync(ConsumeContext context, Exception unreadable) =>
        AgainWhileKeyRingUnreadableAsync(unreadable, () =>
        {
            var check = ReadSeal(context);
            context.ReceiveContext.AddOrUpdatePayload(() => check, _ => check);
            return check.Unreadable;
        }, context.CancellationToken);

    /// <summary>
    /// Tries again what failed with <paramref name="failure"/> because the key ring could not be read, after
    /// each of <see cref="KeyRingWaits"/> (a few seconds in all: the delivery stays unacked meanwhile), until
    /// <paramref name="tryAgain"/> returns no failure. Returns the latest failure, or null once a try succeeded.
    /// The worker stopping ends the waits early, so shutdown is not held. A try is synchronous (Data
    /// Protection reads the ring): against a database that stalls rather than refuses, one can take a whole
    /// command timeout, so none starts once the waits' total has passed.
    /// </summary>
    private async Task<Exception?> AgainWhileKeyRingUnreadableAsync(Exception failure, Func<Exception?> tryAgain, CancellationToken cancellationToken)
    {
        var started = time.GetTimestamp();
        var total = TimeSpan.Zero;
        foreach (var wait in KeyRingWaits)
        {
            total += wait;
            if (time.GetElapsedTime(started) >= total)
            {
                break;
            }

            try
            {
                await Task.Delay(wait, time, cancellationToken);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                break;
            }

            if (tryAgain() is not { } again)
            {
                return null;
            }

            failure = again;
        }

        return failure;
    }

    /// <summary>What reading the copy's seal gave: its history, or the failure that kept it from being checked.</summary>
    private sealed record SealCheck(RedeliveryHistory? History, Exception? Unreadable);

    // One line per delivery given back, not per read: while the ring stays unreadable, every redelivered
    // copy in flight comes back every few seconds.
    [LoggerMessage(EventId = 3101, Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: its redelivery seal could not be checked, the key ring " +
        "unreadable for a few seconds; the message goes back to its queue with its redeliveries untouched: {Error}")]
    private partial void LogSealUnchecked(string consumerId, string key, string error);

    // Likewise one line per delivery given back, not per try.
    [LoggerMessage(EventId = 3102, Level = LogLevel.Warning, Message = "{ConsumerId} {Key}: redelivery {Attempt} could not be sealed for a few seconds " +
        "(the key ring is read from the database); the message goes back to its queue with its redeliveries untouched: {Error}")]
    private partial void LogUnsealed(string consumerId, string key, int attempt, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} {Key} failed transiently; redelivery {Attempt} of {Limit} scheduled for {DueAt:O}: {Error}")]
    private partial void LogScheduled(string consumerId, string key, int attempt, int limit, DateTimeOffset dueAt, string error);

    // Information, not a Warning: the failure's redelivery is the one already logged as scheduled, and this copy adds none.
    [LoggerMessage(EventId = 3103, Level = LogLevel.Information, Message = "{ConsumerId} {Key} failed transiently; joined redelivery {Attempt} of {Limit}, " +
        "stored already by an earlier delivery of the command and due at {DueAt:O}: {Error}")]
    private partial void LogJoined(string consumerId, string key, int attempt, int limit, DateTimeOffset dueAt, string error);
}
