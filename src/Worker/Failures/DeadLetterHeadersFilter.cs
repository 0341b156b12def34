using System.Globalization;
using Conveyor.Contracts;
using Conveyor.Storage;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Redelivery;
using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>
/// First filter of every job endpoint's error pipe: adds Conveyor's headers (job id, attempts,
/// first failure time, a readable reason) beside MassTransit's <c>MT-Fault-*</c> ones.
/// </summary>
public sealed class DeadLetterHeadersFilter(TimeProvider time) : IFilter<ExceptionReceiveContext>
{
    public const string JobKind = "Conveyor-Job-Kind";
    public const string Attempts = "Conveyor-Attempts";
    public const string Reason = "Conveyor-Dead-Letter-Reason";

    public Task Send(ExceptionReceiveContext context, IPipe<ExceptionReceiveContext> next)
    {
        var headers = context.ExceptionHeaders;
        // As the redelivery filter checked them (RedeliverySeal), never a sender's own values.
        var history = context.TryGetPayload(out RedeliveryHistory? received) ? received : RedeliveryHistory.None;
        headers.Set(RedeliveryHeaders.FirstFailureAt, history.FirstFailureAt ?? time.GetUtcNow().ToString("O", CultureInfo.InvariantCulture));
        headers.Set(RedeliveryHeaders.Attempt, history.Attempt.ToString(CultureInfo.InvariantCulture));

        if (context.TryGetPayload(out DeadLetterDetails? details))
        {
            headers.Set(JobKind, details.Kind);
            if (details.JobId is { } jobId)
            {
                headers.Set(JobHeaders.JobId, jobId.ToString());
            }

            if (details.Attempts is { } attempts)
            {
                headers.Set(Attempts, attempts.ToString(CultureInfo.InvariantCulture));
            }

            headers.Set(Reason, details.Transient ? "transient failure; every retry and redelivery spent" : "permanent failure; not retried");
        }
        else
        {
            headers.Set(Reason, ReasonWithoutJob(context.Exception));
        }

        return next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-dead-letter-headers");

    /// <summary>
    /// The reason when the job outcome filter handed over no details: the message could not be read
    /// as its job (MassTransit wraps every failure to read one in a <see cref="System.Runtime.Serialization.SerializationException"/>),
    /// or it was read and the job's row could not be written either. Only the first is unreadable.
    /// </summary>
    public static string ReasonWithoutJob(Exception exception)
    {
        var described = JobTracker.Describe(exception, 500);
        if (IsUnreadable(exception))
        {
            return $"unreadable message: {described}";
        }

        if (DatabaseFailures.IsDatabaseError(exception))
        {
            return $"database error: {described}";
        }

        return FailureClassifier.IsTransient(exception)
            ? $"transient failure; every retry and redelivery spent: {described}"
            : $"permanent failure; not retried: {described}";
    }

    private static bool IsUnreadable(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is System.Runtime.Serialization.SerializationException)
            {
                return true;
            }
        }

        return false;
    }
}
