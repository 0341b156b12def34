using Conveyor.Worker.Redelivery;
using MassTransit;

namespace Conveyor.Worker.Failures;

/// <summary>
/// Refuses bodies and header tables over the endpoint's limits as a permanent failure, before any
/// work is done. Headers near the broker's frame limit would leave no room for what a redelivery or
/// the move to <c>_error</c> adds to them. The headers the worker writes itself on a copy it publishes
/// again are not counted, up to <see cref="RedeliveryHeaders.OwnAllowance"/>, nor those an error-queue
/// move writes on a copy it moves back, up to <see cref="RedeliveryHeaders.MoveAllowance"/>
/// (<see cref="RedeliveryHeaders.CountedBytes"/>): a delayed redelivery, or a move back, of a command that
/// came just under the limit is measured as the command was.
/// </summary>
public sealed class MessageSizeLimitFilter(long maxBytes, long maxHeaderBytes) : IFilter<ConsumeContext>
{
    public Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        var length = context.ReceiveContext.Body.Length;
        if (length > maxBytes)
        {
            throw new PermanentFailureException($"The message body has {length} bytes; the limit is {maxBytes}");
        }

        var headerBytes = HeaderBytes(context.ReceiveContext);
        return headerBytes > maxHeaderBytes
            ? throw new PermanentFailureException($"The message headers take {headerBytes} bytes; the limit is {maxHeaderBytes}")
            : next.Send(context);
    }

    /// <summary>
    /// The header table as it came over AMQP, or the transport headers of another transport, less the
    /// worker's own headers up to their allowance.
    /// </summary>
    public static long HeaderBytes(ReceiveContext context) =>
        context.TryGetPayload(out RabbitMqBasicConsumeContext? amqp)
            ? RedeliveryHeaders.CountedBytes(amqp.Properties.Headers)
            : RedeliveryHeaders.CountedBytes(context.TransportHeaders.GetAll());

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-size-limit");
}
