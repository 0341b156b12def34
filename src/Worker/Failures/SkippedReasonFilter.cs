using System.Diagnostics.CodeAnalysis;
using MassTransit;
using MassTransit.Context;
using RabbitMQ.Client;

namespace Conveyor.Worker.Failures;

/// <summary>
/// First filter of every job endpoint's dead-letter pipe: a message no consumer took (its type is
/// none this endpoint consumes) goes to <c>_skipped</c> with a readable
/// <see cref="DeadLetterHeadersFilter.Reason"/>, as <c>_error</c> copies have one, beside MassTransit's
/// bare <c>MT-Reason: dead-letter</c>. Written into the received headers, which MassTransit's move copies.
/// </summary>
/// <remarks>
/// A message sent with no header table at all (a client that sets no headers, the management UI's publish)
/// has no received headers to write into: the move then reads the message through <see cref="WithHeaderTable"/>,
/// whose properties carry a table holding the reason, and adds its own headers to that table.
/// </remarks>
public sealed class SkippedReasonFilter : IFilter<ReceiveContext>
{
    public Task Send(ReceiveContext context, IPipe<ReceiveContext> next)
    {
        if (!context.TryGetPayload(out RabbitMqBasicConsumeContext? amqp))
        {
            return next.Send(context);
        }

        var queue = context.InputAddress.AbsolutePath.Split('/')[^1];
        var reason = $"no consumer on {queue} takes this message's type (the envelope's messageType, or its content type); nothing ran";
        if (amqp.Properties.Headers is { IsReadOnly: false } headers)
        {
            headers[DeadLetterHeadersFilter.Reason] = reason;
            return next.Send(context);
        }

        var table = amqp.Properties.Headers is { } received ? new Dictionary<string, object?>(received) : [];
        table[DeadLetterHeadersFilter.Reason] = reason;
        return next.Send(new WithHeaderTable(context, amqp, table));
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-skipped-reason");

    /// <summary>
    /// The received message with <paramref name="headers"/> for its header table, as the filters after this one
    /// and MassTransit's move (which copies the properties of the <see cref="RabbitMqBasicConsumeContext"/> it finds)
    /// read it; everything else is the received context's.
    /// </summary>
    private sealed class WithHeaderTable(ReceiveContext context, RabbitMqBasicConsumeContext amqp, IDictionary<string, object?> headers)
        : ReceiveContextProxy(context), RabbitMqBasicConsumeContext
    {
        public string Exchange => amqp.Exchange;

        public string? RoutingKey => amqp.RoutingKey;

        public string ConsumerTag => amqp.ConsumerTag;

        public ulong DeliveryTag => amqp.DeliveryTag;

        public IReadOnlyBasicProperties Properties { get; } = new BasicProperties(amqp.Properties) { Headers = headers };

        public override bool HasPayloadType(Type contextType) => contextType.IsInstanceOfType(this) || base.HasPayloadType(contextType);

        public override bool TryGetPayload<TPayload>([NotNullWhen(true)] out TPayload? payload)
            where TPayload : class
        {
            if (this is TPayload self)
            {
                payload = self;
                return true;
            }

            return base.TryGetPayload(out payload);
        }
    }
}
