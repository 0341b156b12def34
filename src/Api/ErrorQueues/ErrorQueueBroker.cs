using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// Opens the dedicated AMQP connections of error-queue work, one per inspection or operation, apart
/// from the MassTransit bus. No automatic recovery: a walk whose connection drops ends, and the broker
/// requeues whatever it had not acknowledged.
/// </summary>
public sealed class ErrorQueueBroker(IOptions<RabbitMqOptions> options)
{
    public Task<IConnection> ConnectAsync(string purpose, CancellationToken cancellationToken) =>
        ConnectAsync(options.Value, purpose, cancellationToken);

    public static Task<IConnection> ConnectAsync(RabbitMqOptions broker, string purpose, CancellationToken cancellationToken) =>
        broker.ConnectAsync($"conveyor-api-{purpose}", cancellationToken);
}
