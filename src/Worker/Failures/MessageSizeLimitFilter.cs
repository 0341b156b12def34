using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>Refuses bodies over the endpoint's limit as a permanent failure, before any work is done.</summary>
public sealed class MessageSizeLimitFilter(long maxBytes) : IFilter<ConsumeContext>
{
    public Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        var length = context.ReceiveContext.Body.Length;
        return length > maxBytes
            ? throw new PermanentFailureException($"The message body has {length} bytes; the limit is {maxBytes}")
            : next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-size-limit");
}
