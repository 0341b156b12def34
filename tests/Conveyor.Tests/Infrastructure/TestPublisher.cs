using MassTransit;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// "Another service": a plain MassTransit bus that knows only the contracts and the broker,
/// publishing straight to RabbitMQ without the Api.
/// </summary>
public sealed class TestPublisher : IAsyncDisposable
{
    private readonly IBusControl _bus;

    private TestPublisher(IBusControl bus) => _bus = bus;

    public static async Task<TestPublisher> StartAsync(ConveyorFixture fixture)
    {
        var servers = fixture.Servers;
        var bus = Bus.Factory.CreateUsingRabbitMq(cfg =>
            cfg.Host(servers.RabbitHost, (ushort)servers.RabbitPort, fixture.VirtualHost, $"test-publisher ({CallingTest.Name()})", h =>
            {
                h.Username(servers.RabbitUser);
                h.Password(servers.RabbitPassword);
                h.PublisherConfirmation = true;
            }));
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await bus.StartAsync(cts.Token);
        return new TestPublisher(bus);
    }

    /// <param name="headers">Envelope headers, as a producer sets them with <c>context.Headers.Set</c>.</param>
    public Task PublishAsync<T>(T message, Guid? messageId = null, IReadOnlyDictionary<string, string>? headers = null) where T : class =>
        _bus.Publish(message, context =>
        {
            if (messageId is { } id)
            {
                context.MessageId = id;
            }

            foreach (var (name, value) in headers ?? new Dictionary<string, string>())
            {
                context.Headers.Set(name, value);
            }
        });

    public async ValueTask DisposeAsync() => await _bus.StopAsync();
}
