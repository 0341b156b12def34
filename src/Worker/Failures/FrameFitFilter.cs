using Conveyor.Worker.Messaging;
using MassTransit;
using MassTransit.RabbitMqTransport;
using MassTransit.Serialization;

namespace Conveyor.Worker.Failures;

/// <summary>
/// Last filter before the move to <c>_error</c> (error pipe) or <c>_skipped</c> (dead-letter pipe).
/// The copy carries every received header plus MassTransit's <c>MT-Host-*</c> headers and, to
/// <c>_error</c>, the <c>MT-Fault-*</c> and Conveyor headers: a message whose headers came close to
/// the broker's frame limit would no longer fit, and the broker would close the worker's whole
/// connection, every endpoint's consumer with it, then hand the message out again, forever. Here
/// the largest received headers are dropped until the copy fits, and
/// <see cref="OversizedHeaders.DroppedHeader"/> names them.
/// </summary>
/// <remarks>
/// MassTransit's move copies the received properties' header dictionary by reference and writes its
/// own headers into it, so dropping entries from that dictionary is what shapes the copy.
/// </remarks>
public sealed partial class FrameFitFilter(ILogger logger) : IFilter<ExceptionReceiveContext>, IFilter<ReceiveContext>
{
    /// <summary>What the dead-letter move adds besides the host headers.</summary>
    private static readonly KeyValuePair<string, object>[] SkipHeaders = [new(MessageHeaders.Reason, "dead-letter")];

    private static readonly Lazy<long> HostHeaderBytes = new(() =>
    {
        var host = new DictionarySendHeaders();
        host.SetHostHeaders();
        return AmqpFrame.TableBytes(host.GetAll());
    });

    public Task Send(ExceptionReceiveContext context, IPipe<ExceptionReceiveContext> next)
    {
        Fit(context, AmqpFrame.TableBytes(context.ExceptionHeaders.GetAll()));
        return next.Send(context);
    }

    public Task Send(ReceiveContext context, IPipe<ReceiveContext> next)
    {
        Fit(context, AmqpFrame.TableBytes(SkipHeaders));
        return next.Send(context);
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-frame-fit");

    private void Fit(ReceiveContext context, long addedBytes)
    {
        if (!context.TryGetPayload(out RabbitMqBasicConsumeContext? amqp)
            || amqp.Properties.Headers is not { IsReadOnly: false } headers)
        {
            return;
        }

        var frameMax = context.TryGetPayload(out ChannelContext? channel) ? channel.ConnectionContext.Connection.FrameMax : AmqpFrame.DefaultFrameMax;
        // Counted whole even where they replace a received header of the same name: a little room
        // given away, never too little.
        var budget = AmqpFrame.ContentHeaderBudget(frameMax) - AmqpFrame.ContentHeaderBytes(amqp.Properties)
            + AmqpFrame.TableBytes(headers) - addedBytes - HostHeaderBytes.Value;
        var before = AmqpFrame.TableBytes(headers);
        if (OversizedHeaders.DropLargest(headers, budget) is { } note)
        {
            LogDropped(context.InputAddress, amqp.Properties.MessageId, before, note);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "A message from {InputAddress} (id {MessageId}) had {HeaderBytes} bytes of headers, too many for its copy to _error or _skipped to fit in a frame; dropped: {Dropped}")]
    private partial void LogDropped(Uri inputAddress, string? messageId, long headerBytes, string dropped);
}
