using System.Text.Json;
using Conveyor.ServiceDefaults;
using Conveyor.Storage.Redelivery;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Conveyor.Worker.Redelivery;

/// <summary>
/// Publishes stored messages straight to their queues (default exchange, persistent, mandatory)
/// on a dedicated channel with publisher confirms, so a row is deleted only after the broker has it.
/// </summary>
public sealed class BrokerPublisher(IOptions<RabbitMqOptions> options) : IAsyncDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private IConnection? _connection;
    private IChannel? _channel;

    /// <summary>Publishes each message and waits for its confirm; returns the ids the broker confirmed.</summary>
    public async Task<IReadOnlyList<long>> PublishAsync(IReadOnlyList<ScheduledMessage> messages, CancellationToken cancellationToken)
    {
        var channel = await ChannelAsync(cancellationToken);
        var publishes = messages.Select(async message =>
        {
            try
            {
                await channel.BasicPublishAsync(string.Empty, message.Destination, mandatory: true, PropertiesOf(message), message.Body, cancellationToken);
                return message.Id;
            }
            catch (Exception exception) when (exception is RabbitMQ.Client.Exceptions.PublishException)
            {
                return (long?)null;
            }
        }).ToList();
        var results = await Task.WhenAll(publishes);
        return [.. results.OfType<long>()];
    }

    /// <summary>
    /// Gives up the channel and its connection without waiting: the next publish opens new ones. They
    /// are closed in the background, since a close waits for the broker's answer and the broker may be
    /// the one not answering. Called by the dispatcher's loop, which never publishes at the same time.
    /// </summary>
    public void Abandon()
    {
        var (channel, connection) = (_channel, _connection);
        (_channel, _connection) = (null, null);
        _ = Task.Run(async () =>
        {
            try
            {
                if (channel is not null)
                {
                    await channel.DisposeAsync();
                }

                if (connection is not null)
                {
                    await connection.DisposeAsync();
                }
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // Gone either way.
            }
        });
    }

    private static BasicProperties PropertiesOf(ScheduledMessage message)
    {
        var headers = JsonSerializer.Deserialize<Dictionary<string, string>>(message.Headers) ?? [];
        return new BasicProperties
        {
            ContentType = message.ContentType,
            MessageId = message.MessageId,
            DeliveryMode = DeliveryModes.Persistent,
            Headers = headers.ToDictionary(h => h.Key, h => (object?)h.Value),
        };
    }

    private async Task<IChannel> ChannelAsync(CancellationToken cancellationToken)
    {
        if (_channel is { IsOpen: true } open)
        {
            return open;
        }

        await _gate.WaitAsync(cancellationToken);
        try
        {
            if (_channel is { IsOpen: true } raced)
            {
                return raced;
            }

            await CloseAsync();
            _connection = await options.Value.ConnectAsync("conveyor-redelivery-dispatcher", cancellationToken);
            _channel = await _connection.CreateChannelAsync(
                new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true),
                cancellationToken);
            return _channel;
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task CloseAsync()
    {
        if (_channel is not null)
        {
            await _channel.DisposeAsync();
            _channel = null;
        }

        if (_connection is not null)
        {
            await _connection.DisposeAsync();
            _connection = null;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await CloseAsync();
        _gate.Dispose();
    }
}
