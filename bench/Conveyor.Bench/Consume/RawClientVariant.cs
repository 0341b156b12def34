using System.Text.Json;
using Conveyor.Bench.Infrastructure;
using Conveyor.Worker.Payments;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Conveyor.Bench.Consume;

/// <summary>
/// RabbitMQ.Client alone: basic.qos = prefetch, as many handlers as the concurrency, each parses the
/// MassTransit JSON envelope, calls the gateway and acks.
/// </summary>
public sealed class RawClientVariant(BenchEnvironment environment, InstantGateway gateway) : IConsumeVariant
{
    private long _requestsBefore;

    public string Name => "raw-client";

    public string Description => "RabbitMQ.Client 7 consumer: parse envelope, call the gateway, ack; no framework, no database";

    public async Task<IConsumeSession> OpenAsync(ConsumeSettings settings)
    {
        var http = new HttpClient { BaseAddress = gateway.BaseAddress, Timeout = TimeSpan.FromSeconds(10) };
        var connection = await environment.AmqpFactory().CreateConnectionAsync("conveyor-bench-raw");
        var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: false, publisherConfirmationTrackingEnabled: false,
            consumerDispatchConcurrency: (ushort)settings.Concurrency));
        await channel.BasicQosAsync(0, (ushort)settings.Prefetch, false);
        return new Session(() => _requestsBefore = gateway.Requests, connection, channel, http);
    }

    public Task VerifyAsync(int messages)
    {
        var requests = gateway.Requests - _requestsBefore;
        return requests == messages
            ? Task.CompletedTask
            : throw new InvalidOperationException($"raw-client: {requests} gateway requests for {messages} messages");
    }

    /// <summary>One connection and channel for the whole group; a resume is a basic.consume, a pause its basic.cancel.</summary>
    private sealed class Session(Action onResume, IConnection connection, IChannel channel, HttpClient http) : IConsumeSession
    {
        private readonly HttpPaymentGateway _payments = new(http, TimeProvider.System);
        private string? _consumerTag;
        private DrainClock? _clock;

        public async Task ResumeAsync(DrainClock clock)
        {
            onResume();
            _clock = clock;
            var consumer = new AsyncEventingBasicConsumer(channel);
            consumer.ReceivedAsync += async (_, delivery) =>
            {
                using var envelope = JsonDocument.Parse(delivery.Body);
                var message = envelope.RootElement.GetProperty("message");
                await _payments.ChargeAsync(
                    new ChargeRequest(
                        message.GetProperty("accountId").GetString()!,
                        message.GetProperty("amountMinor").GetInt64(),
                        message.GetProperty("currency").GetString()!),
                    message.GetProperty("paymentId").GetGuid().ToString(),
                    CancellationToken.None);
                await channel.BasicAckAsync(delivery.DeliveryTag, multiple: false);
                _clock?.Completed();
            };
            _consumerTag = await channel.BasicConsumeAsync(ConsumeBenchmark.Queue, autoAck: false, consumer);
        }

        public async Task PauseAsync()
        {
            if (_consumerTag is { } tag)
            {
                await channel.BasicCancelAsync(tag);
                _consumerTag = null;
            }

            _clock = null;
        }

        public async ValueTask DisposeAsync()
        {
            await channel.CloseAsync();
            await channel.DisposeAsync();
            await connection.CloseAsync();
            await connection.DisposeAsync();
            http.Dispose();
        }
    }
}
