using Conveyor.Worker.Failures;
using Conveyor.Worker.Inbox;
using MassTransit;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// Outermost filter of a job endpoint: an exception that reaches it has spent every attempt (or
/// was permanent), so the job is marked dead-lettered and the details are handed to the error
/// pipe (<see cref="DeadLetterHeadersFilter"/>) before MassTransit moves the message to <c>_error</c>.
/// An attempt cut short by a shutdown is not a failure: the broker hands the message out again.
/// </summary>
public sealed partial class JobOutcomeFilter<T>(JobTracker tracker, JobMetrics metrics, JobDescriptor<T> descriptor, ILogger logger)
    : IFilter<ConsumeContext>
    where T : class
{
    public async Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        try
        {
            await next.Send(context);
        }
        catch (Exception exception) when (context.TryGetMessage<T>(out var consumeContext))
        {
            // Scoped to the attempt this delivery's claim counted: a newer attempt's status stands.
            var job = new JobRef(descriptor.Kind, descriptor.BusinessKey(consumeContext.Message), InboxKeys.ClaimedJobIdOf(context), ClaimedAttempt.Of(context));
            if (exception is RequeueRequestedException)
            {
                // Its database is away: nothing to record, and the message goes back to its queue.
                throw;
            }

            var stopping = exception is OperationCanceledException && context.CancellationToken.IsCancellationRequested;
            try
            {
                if (stopping)
                {
                    await tracker.MarkInterruptedAsync(job, CancellationToken.None);
                }
                else
                {
                    if (exception is not (IdempotencyConflictException or LeaseDeferralsSpentException))
                    {
                        metrics.DeadLettered(job.Kind);
                        await tracker.MarkDeadLetteredAsync(job, exception, CancellationToken.None);
                    }

                    // A conflict leaves the job as the applied command made it: it is that command's
                    // job. A copy parked too often behind another worker's lease leaves it to the run that
                    // holds the lease. The _error message names it all the same, for the operator who decides.
                    // The row's id goes into the _error message, never the id the message claimed: an
                    // operator's move by job id must find this job's command, not one that named it. Its
                    // attempt count is this delivery's own: a newer copy may have claimed the row since.
                    var row = await tracker.FindAsync(job, CancellationToken.None);
                    context.ReceiveContext.GetOrAddPayload(() => new DeadLetterDetails(
                        row?.Id, job.Kind, job.Attempt ?? row?.Attempts, FailureClassifier.IsTransient(exception)));
                }
            }
            catch (Exception statusException) when (statusException is not OutOfMemoryException)
            {
                LogStatusWriteFailed(logger, statusException, job.Kind, job.BusinessKey);
            }

            throw;
        }
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-job-outcome");

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not record the outcome of job {Kind}/{BusinessKey}")]
    private static partial void LogStatusWriteFailed(ILogger logger, Exception exception, string kind, string businessKey);
}

/// <summary>What the error pipe adds as headers to a dead-lettered job message.</summary>
public sealed record DeadLetterDetails(Guid? JobId, string Kind, int? Attempts, bool Transient);
