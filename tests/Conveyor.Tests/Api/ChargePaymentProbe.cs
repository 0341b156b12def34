using RabbitMQ.Client;

namespace Conveyor.Tests.Api;

/// <summary>
/// A temporary queue bound to the exchange MassTransit publishes <c>ChargePayment</c> (or another
/// command) to, declared as MassTransit declares it, so a test sees what the Api published.
/// </summary>
internal sealed class ChargePaymentProbe : IAsyncDisposable
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";

    public const string DeliverWebhookExchange = "Conveyor.Contracts.Webhooks:DeliverWebhook";

    private readonly IConnection _connection;

    private ChargePaymentProbe(IConnection connection, IChannel channel, string queue)
    {
        _connection = connection;
        Channel = channel;
        Queue = queue;
    }

    public IChannel Channel { get; }

    public string Queue { get; }

    public static async Task<ChargePaymentProbe> BindAsync(Infrastructure.ConveyorFixture fixture, string exchange = Exchange)
    {
        var connection = await fixture.AmqpFactory().CreateConnectionAsync();
        var channel = await connection.CreateChannelAsync();
        await channel.ExchangeDeclareAsync(exchange, ExchangeType.Fanout, durable: true, autoDelete: false);
        var queue = await channel.QueueDeclareAsync();
        await channel.QueueBindAsync(queue.QueueName, exchange, routingKey: "");
        return new ChargePaymentProbe(connection, channel, queue.QueueName);
    }

    public async ValueTask DisposeAsync()
    {
        await Channel.DisposeAsync();
        await _connection.DisposeAsync();
    }
}
