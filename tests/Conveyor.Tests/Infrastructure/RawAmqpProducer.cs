using System.Text;
using System.Text.Json;
using RabbitMQ.Client;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A non-.NET producer's view: plain AMQP 0-9-1, publishing a MassTransit JSON envelope to the
/// message type's exchange, with publisher confirms. README documents this format.
/// </summary>
public sealed class RawAmqpProducer : IAsyncDisposable
{
    public const string EnvelopeContentType = "application/vnd.masstransit+json";

    private readonly IConnection _connection;
    private readonly IChannel _channel;

    private RawAmqpProducer(IConnection connection, IChannel channel)
    {
        _connection = connection;
        _channel = channel;
    }

    public static async Task<RawAmqpProducer> ConnectAsync(ConveyorFixture fixture, string? virtualHost = null)
    {
        var connection = await fixture.AmqpFactory(virtualHost).CreateConnectionAsync($"conveyor-tests-raw-producer ({CallingTest.Name()})");
        var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        return new RawAmqpProducer(connection, channel);
    }

    /// <summary>Publishes <paramref name="message"/> (camelCase JSON) as the given MassTransit message type.</summary>
    /// <param name="headers">Transport headers, as another publisher (or a move from <c>_error</c>) sets them.</param>
    public Task PublishEnvelopeAsync(
        string exchange, string messageUrn, object message, Guid? messageId = null, IReadOnlyDictionary<string, string>? headers = null)
    {
        var id = messageId ?? Guid.NewGuid();
        var envelope = new
        {
            messageId = id,
            messageType = new[] { messageUrn },
            sentTime = DateTimeOffset.UtcNow,
            headers = new Dictionary<string, object>(),
            message,
        };
        var body = JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web);
        return PublishRawAsync(exchange, body, EnvelopeContentType, id.ToString(), headers);
    }

    /// <summary>Any bytes with any content type: what a buggy or hostile producer might send.</summary>
    public async Task PublishRawAsync(
        string exchange, byte[] body, string? contentType, string? messageId = null, IReadOnlyDictionary<string, string>? headers = null)
    {
        var properties = new BasicProperties
        {
            ContentType = contentType,
            DeliveryMode = DeliveryModes.Persistent,
            MessageId = messageId,
            Headers = headers?.ToDictionary(h => h.Key, h => (object?)h.Value),
        };
        await _channel.BasicPublishAsync(exchange, routingKey: "", mandatory: false, basicProperties: properties, body: body);
    }

    /// <summary>
    /// Publishes with no AMQP header table at all, as a client that sets no headers does. Not on this producer's
    /// channel: with publisher confirms tracked, RabbitMQ.Client stamps its sequence number header
    /// (<c>x-dotnet-pub-seq-no</c>) on every message. The channel's close follows the publish, so the broker has
    /// routed the message by the time this returns.
    /// </summary>
    public async Task PublishWithoutHeaderTableAsync(string exchange, string routingKey, byte[] body, string? contentType, string? messageId = null)
    {
        await using var bare = await _connection.CreateChannelAsync();
        var properties = new BasicProperties { ContentType = contentType, DeliveryMode = DeliveryModes.Persistent, MessageId = messageId };
        await bare.BasicPublishAsync(exchange, routingKey, mandatory: false, basicProperties: properties, body: body);
        await bare.CloseAsync();
    }

    public static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);

    /// <summary>
    /// Takes what lands in <paramref name="queue"/> until it has been exactly one message, within
    /// <paramref name="timeout"/> (30 s by default), and returns it; <paramref name="describe"/> says where
    /// the pipeline stands when it does not.
    /// </summary>
    public async Task<TakenMessage> TakeOnlyAsync(string queue, Func<Task<string>> describe, TimeSpan? timeout = null)
    {
        var taken = new List<TakenMessage>();
        await Eventually.AssertAsync(async () =>
        {
            taken.AddRange(await TakeAllAsync(queue));
            Assert.Single(taken);
        }, describe, timeout ?? TimeSpan.FromSeconds(30));
        return taken[0];
    }

    /// <summary>Takes every message now in <paramref name="queue"/> (destructively): for asserting on what landed there.</summary>
    /// <remarks>A queue that does not exist yet (MassTransit declares <c>_error</c> at its first message) holds
    /// none: asked on a channel of its own, whose closing by the broker's 404 cannot take this one along.</remarks>
    public async Task<IReadOnlyList<TakenMessage>> TakeAllAsync(string queue)
    {
        var taken = new List<TakenMessage>();
        await using (var probe = await _connection.CreateChannelAsync())
        {
            try
            {
                await probe.QueueDeclarePassiveAsync(queue);
            }
            catch (RabbitMQ.Client.Exceptions.OperationInterruptedException missing) when (missing.ShutdownReason?.ReplyCode == Constants.NotFound)
            {
                return taken;
            }
        }

        while (await _channel.BasicGetAsync(queue, autoAck: true) is { } result)
        {
            var headers = (result.BasicProperties.Headers ?? new Dictionary<string, object?>())
                .ToDictionary(h => h.Key, h => h.Value switch
                {
                    byte[] bytes => Encoding.UTF8.GetString(bytes),
                    null => null,
                    var other => Convert.ToString(other, System.Globalization.CultureInfo.InvariantCulture),
                }, StringComparer.OrdinalIgnoreCase);
            taken.Add(new TakenMessage(headers, result.Body.ToArray(), result.BasicProperties.ContentType));
        }

        return taken;
    }

    public sealed record TakenMessage(IReadOnlyDictionary<string, string?> Headers, byte[] Body, string? ContentType)
    {
        public string? Header(string name) => Headers.TryGetValue(name, out var value) ? value : null;
    }

    public async ValueTask DisposeAsync()
    {
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
    }
}
