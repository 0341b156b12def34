using Conveyor.Storage.Jobs;
using MassTransit;

namespace Conveyor.Worker.Jobs;

/// <summary>
/// Sits outside the retry filter: an exception that reaches it has spent every attempt, so the
/// job is marked failed before MassTransit moves the message to <c>_error</c>.
/// </summary>
public sealed partial class JobOutcomeFilter<T>(JobTracker tracker, JobDescriptor<T> descriptor, ILogger logger)
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
            var job = new JobRef(descriptor.Kind, descriptor.BusinessKey(consumeContext.Message), null);
            try
            {
                await tracker.RecordFailureAsync(job, exception, JobStatus.Failed, CancellationToken.None);
            }
            catch (Exception statusException) when (statusException is not OutOfMemoryException)
            {
                LogStatusWriteFailed(logger, statusException, job.Kind, job.BusinessKey);
            }

            throw;
        }
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-job-outcome");

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not mark job {Kind}/{BusinessKey} failed")]
    private static partial void LogStatusWriteFailed(ILogger logger, Exception exception, string kind, string businessKey);
}
