using System.Globalization;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Storage;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Redelivery;
using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>
/// First filter of every job endpoint's error pipe: adds Conveyor's headers (job id, attempts,
/// first failure time, a readable reason) beside MassTransit's <c>MT-Fault-*</c> ones.
/// </summary>
/// <param name="commandReadFailure">
/// Why the envelope's command cannot be read as the endpoint's job (<see cref="EnvelopeReader.CommandReadFailure{T}"/>), or null.
/// </param>
public sealed class DeadLetterHeadersFilter(TimeProvider time, Func<ReadOnlyMemory<byte>, Exception?>? commandReadFailure = null) : IFilter<ExceptionReceiveContext>
{
    public const string JobKind = "Conveyor-Job-Kind";
    public const string Attempts = "Conveyor-Attempts";
    public const string Reason = "Conveyor-Dead-Letter-Reason";

    /// <summary>How much of a failure's own message a reason carries.</summary>
    private const int MaxCauseLength = 500;

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
            else
            {
                ForgetClaim(context, JobHeaders.JobId);
            }

            if (details.Attempts is { } attempts)
            {
                headers.Set(Attempts, attempts.ToString(CultureInfo.InvariantCulture));
            }
            else
            {
                ForgetClaim(context, Attempts);
            }

            // A permanent failure's own words say what to fix (an invalid command names its fields).
            headers.Set(Reason, details.Transient ? "transient failure; every retry and redelivery spent"
                : context.Exception is IdempotencyConflictException ? $"idempotency conflict; not applied: {PermanentCause(context.Exception)}"
                : context.Exception is LeaseDeferralsSpentException ? $"lease held by another worker; not run: {PermanentCause(context.Exception)}"
                : $"permanent failure; not retried: {PermanentCause(context.Exception)}");
        }
        else
        {
            // Unreadable as its job, or its job's row could not be read: no job is known that the copy could
            // name, so it names none a sender claimed either (see ForgetClaim), nor that job's kind or attempts.
            ForgetClaim(context, JobHeaders.JobId);
            ForgetClaim(context, Attempts);
            ForgetClaim(context, JobKind);
            var body = context.Body.GetBytes();
            headers.Set(Reason, ReasonWithoutJob(context.Exception, body, CannotBeReadAsJob(context.Exception, body)));
        }

        return next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-dead-letter-headers");

    /// <summary>
    /// The reason when the job outcome filter handed over no details: the message could not be read
    /// as its job (MassTransit wraps a failure to read its envelope in a <see cref="System.Runtime.Serialization.SerializationException"/>;
    /// one to read its command comes as a bare <see cref="JsonException"/>, <paramref name="unreadable"/>),
    /// or it was read and the job's row could not be written either. Only the first is unreadable.
    /// </summary>
    /// <param name="body">The message as it arrived: a body that is no envelope gets a reason the producer can act on.</param>
    /// <param name="unreadable">Whether the message is known not to read as its job (<see cref="CannotBeReadAsJob"/>).</param>
    public static string ReasonWithoutJob(Exception exception, ReadOnlySpan<byte> body = default, bool unreadable = false)
    {
        var described = JobTracker.Describe(exception, 500);
        if (unreadable || IsUnreadable(exception))
        {
            // MassTransit's own words for a body that is no envelope name its internals (a null 'envelope'
            // parameter); MT-Fault-Message keeps them.
            return $"unreadable message: {EnvelopeReader.EnvelopeProblem(body) ?? described}";
        }

        if (DatabaseFailures.IsDatabaseError(exception))
        {
            return $"database error: {described}";
        }

        return FailureClassifier.IsTransient(exception)
            ? $"transient failure; every retry and redelivery spent: {described}"
            : $"permanent failure; not retried: {described}";
    }

    /// <summary>
    /// The job has no row (its command was refused before one was made, or could not even be read), or no
    /// attempt: a job id, an attempt count or a kind the message came with is only its sender's claim, and
    /// the job id may be another job's. Left on the copy, the Api's listing showed that job's status beside
    /// this command, and an operator's move by that job's id took this command along. Removed from the
    /// received headers, which MassTransit's move copies (see <see cref="FrameFitFilter"/>).
    /// </summary>
    private static void ForgetClaim(ReceiveContext context, string header)
    {
        if (context.TryGetPayload(out RabbitMqBasicConsumeContext? amqp) && amqp.Properties.Headers is { IsReadOnly: false } received)
        {
            foreach (var name in received.Keys.Where(name => string.Equals(name, header, StringComparison.OrdinalIgnoreCase)).ToList())
            {
                received.Remove(name);
            }
        }
    }

    /// <summary>
    /// Whether the envelope was read but its command cannot be read as the job: a field of the wrong JSON type (a
    /// string for a number, a number for a string, an amount with a fraction or beyond 64 bits, an id that is no
    /// UUID). MassTransit reads the command only when its message-type filter first asks for it, ahead of every
    /// filter of the endpoint, and its reader's <c>JsonException</c> comes bare, not wrapped as a body it cannot
    /// read is: the reason read "permanent failure; not retried: JsonException", as for a command read and refused.
    /// Read again here, from the body, as MassTransit reads it: only a command that does not read is unreadable.
    /// </summary>
    private bool CannotBeReadAsJob(Exception exception, byte[] body) =>
        exception is JsonException && commandReadFailure?.Invoke(body) is not null;

    private static string PermanentCause(Exception exception) => exception is PermanentFailureException or IdempotencyConflictException or LeaseDeferralsSpentException
        ? exception.Message.Length <= MaxCauseLength ? exception.Message : exception.Message[..MaxCauseLength]
        : JobTracker.Describe(exception, MaxCauseLength);

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
