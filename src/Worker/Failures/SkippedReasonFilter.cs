using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>
/// First filter of every job endpoint's dead-letter pipe: a message no consumer took (its type is
/// none this endpoint consumes) goes to <c>_skipped</c> with a readable
/// <see cref="DeadLetterHeadersFilter.Reason"/>, as <c>_error</c> copies have one, beside MassTransit's
/// bare <c>MT-Reason: dead-letter</c>. Written into the received headers, which MassTransit's move copies.
/// </summary>
public sealed class SkippedReasonFilter : IFilter<ReceiveContext>
{
    public Task Send(ReceiveContext context, IPipe<ReceiveContext> next)
    {
        if (context.TryGetPayload(out RabbitMqBasicConsumeContext? amqp) && amqp.Properties.Headers is { IsReadOnly: false } headers)
        {
            var queue = context.InputAddress.AbsolutePath.Split('/')[^1];
            headers[DeadLetterHeadersFilter.Reason] =
                $"no consumer on {queue} takes this message's type (the envelope's messageType, or its content type); nothing ran";
        }

        return next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-skipped-reason");
}
