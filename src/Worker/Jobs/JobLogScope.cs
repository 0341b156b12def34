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
}
