using MassTransit;

namespace Conveyor.Worker.Jobs;

/// <summary>Puts the job's identity on every log line written while it runs (the trace id comes from the activity).</summary>
public static class JobLogScope
{
    public static IDisposable? Begin(ILogger logger, JobRef? job, ConsumeContext context) =>
        logger.BeginScope(new Dictionary<string, object?>
        {
            ["JobId"] = job?.JobId,
            ["JobKind"] = job?.Kind,
            ["BusinessKey"] = job?.BusinessKey,
            ["MessageId"] = context.MessageId,
        });

    /// <summary>
    /// A job's scope that can be opened again under another id: the batched inbox's apply gives the job's
    /// row an id of its own when the one its message claimed was taken meanwhile (ADR 0004), and the lines
    /// logged after that must name the job that was written, not the claim.
    /// </summary>
    public sealed class Switchable(ILogger logger, JobRef job, ConsumeContext context) : IDisposable
    {
        private IDisposable? _scope = Begin(logger, job, context);

        public JobRef Job { get; private set; } = job;

        /// <summary>The job under <paramref name="jobId"/>, its scope reopened if that is another id.</summary>
        public JobRef Follow(Guid? jobId)
        {
            if (jobId != Job.JobId)
            {
                Job = Job with { JobId = jobId };
                // Nothing opened inside it is still open here: the consumer has returned.
                _scope?.Dispose();
                _scope = Begin(logger, Job, context);
            }

            return Job;
        }

        public void Dispose() => _scope?.Dispose();
    }
}
