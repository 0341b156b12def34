using Conveyor.Contracts;
using Conveyor.Storage;
using MassTransit;

namespace Conveyor.Api.Jobs;

/// <summary>A validated job submission: the command to publish and the key that makes it unique.</summary>
internal abstract class JobRequest(string kind, Guid businessId)
{
    /// <summary>One of <see cref="JobKinds"/>.</summary>
    public string Kind { get; } = kind;

    /// <summary>The command's business id in "D" format, as stored in <c>jobs.business_key</c>.</summary>
    public string BusinessKey { get; } = businessId.ToString("D");

    /// <summary>When the job is to run; null = now.</summary>
    public DateTimeOffset? RunAt { get; set; }

    /// <summary>
    /// <see cref="RunAt"/> is past or too far ahead (read with <c>deferRunAtWindow</c>): only a repeat of
    /// a request accepted while it was ahead may name it, and it gets the job it created, never a new one.
    /// </summary>
    public bool RunAtOutsideWindow { get; set; }

    /// <param name="fingerprinted">The command as the client wrote it, when <paramref name="command"/> is
    /// published otherwise (a webhook's payload in name order): its fingerprint also knows the legacy one
    /// that rows from before hold (ADR 0011, amendment).</param>
    public static JobRequest For<TCommand>(string kind, Guid businessId, TCommand command, TCommand? fingerprinted = null)
        where TCommand : class =>
        new Typed<TCommand>(kind, businessId, command, fingerprinted ?? command);

    /// <summary>
    /// What the command says (<see cref="PayloadFingerprint"/>, as the worker's inbox takes it; <c>runAt</c> is
    /// not part of it): a business id submitted again with another command is refused (ADR 0011).
    /// </summary>
    public abstract byte[]? Fingerprint { get; }

    /// <summary>Publishes the command stamped with the job id; returns once the broker has confirmed it into a queue.</summary>
    public abstract Task PublishAsync(IPublishEndpoint endpoint, Guid jobId, CancellationToken cancellationToken);

    /// <summary>The command as a MassTransit JSON envelope, the bytes a scheduled job is published with.</summary>
    public abstract byte[] ToEnvelope(Guid messageId, Guid jobId, DateTimeOffset sentTime);

    private sealed class Typed<TCommand>(string kind, Guid businessId, TCommand command, TCommand fingerprinted)
        : JobRequest(kind, businessId)
        where TCommand : class
    {
        private readonly Lazy<byte[]?> _fingerprint = new(() => PayloadFingerprint.Of(fingerprinted));

        public override byte[]? Fingerprint => _fingerprint.Value;

        public override Task PublishAsync(IPublishEndpoint endpoint, Guid jobId, CancellationToken cancellationToken) =>
            endpoint.Publish(
                command,
                context =>
                {
                    context.Headers.Set(JobHeaders.JobId, jobId.ToString());
                    // A confirm alone does not say a queue took the command: with no queue bound to
                    // its exchange (no worker has declared it yet, or the queue was deleted) the broker
                    // confirms and drops it. Mandatory, it is returned and the publish throws, so the
                    // job is refused (503) instead of accepted and lost.
                    if (context.TryGetPayload(out RabbitMqSendContext? rabbit))
                    {
                        rabbit.Mandatory = true;
                    }
                },
                cancellationToken);

        public override byte[] ToEnvelope(Guid messageId, Guid jobId, DateTimeOffset sentTime) =>
            ScheduledJobs.Envelope(command, MessageUrn.ForTypeString<TCommand>(), messageId, jobId, sentTime);
    }
}
