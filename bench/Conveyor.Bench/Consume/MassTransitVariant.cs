using Conveyor.Bench.Infrastructure;
using Conveyor.Contracts.Payments;
using Conveyor.ServiceDefaults;
using Conveyor.Worker.Payments;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Conveyor.Bench.Consume;

/// <summary>
/// The same MassTransit setup as the worker (hosted bus, publisher confirms, DI consumer, same queue,
/// prefetch and concurrency) without the inbox, job tracking and failure filters.
/// </summary>
public sealed class MassTransitVariant(BenchEnvironment environment, InstantGateway gateway) : IConsumeVariant
{
    private long _requestsBefore;

    public string Name => "masstransit";

    public string Description => "MassTransit 8.5 hosted bus, same queue/prefetch/concurrency, consumer calls the gateway; no inbox, no database";

    public async Task<IConsumeSession> OpenAsync(ConsumeSettings settings)
    {
        var builder = Host.CreateApplicationBuilder();
        // A dependency the baseline lacks fails here, at once, not as an error per message.
        builder.ConfigureContainer(new DefaultServiceProviderFactory(new ServiceProviderOptions { ValidateOnBuild = true, ValidateScopes = true }));
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        // As the worker registers it (WorkerApp): the gateway client reads Retry-After dates on it.
        builder.Services.AddSingleton(TimeProvider.System);
        builder.Services.AddHttpClient<IPaymentGateway, HttpPaymentGateway>(http =>
        {
            http.BaseAddress = gateway.BaseAddress;
            http.Timeout = TimeSpan.FromSeconds(10);
        });
        var broker = new RabbitMqOptions
        {
            Host = environment.RabbitHost,
            Port = environment.RabbitPort,
            VirtualHost = environment.VirtualHost,
            Username = environment.RabbitUser,
            Password = environment.RabbitPassword,
        };
        builder.Services.AddMassTransit(bus =>
        {
            bus.WithoutUsageTelemetry();
            bus.AddConsumer<TrivialChargeConsumer>();
            bus.UsingRabbitMq((context, cfg) =>
            {
                cfg.UseConveyorBroker(broker, "conveyor-bench-masstransit");
                cfg.ReceiveEndpoint("charge-payment", endpoint =>
                {
                    if (BenchEnvironment.QuorumQueues)
                    {
                        endpoint.SetQuorumQueue();
                    }
                    else if (BenchEnvironment.LazyQueues)
                    {
                        endpoint.Lazy = true;
                    }

                    endpoint.PrefetchCount = settings.Prefetch;
                    endpoint.ConcurrentMessageLimit = settings.Concurrency;
                    endpoint.ConfigureConsumer<TrivialChargeConsumer>(context);
                });
            });
        });
        var host = builder.Build();
        var session = await EndpointSession.StartPausedAsync(
            host.Services.GetRequiredService<IBus>(),
            ConsumeBenchmark.Queue,
            () => host.StartAsync(),
            async () =>
            {
                await host.StopAsync();
                host.Dispose();
            });
        return new CountingSession(session, () => _requestsBefore = gateway.Requests);
    }

    public Task VerifyAsync(int messages)
    {
        var requests = gateway.Requests - _requestsBefore;
        return requests == messages
            ? Task.CompletedTask
            : throw new InvalidOperationException($"masstransit: {requests} gateway requests for {messages} messages");
    }

    /// <summary>Notes the gateway's request count at each resume, for <see cref="VerifyAsync"/>.</summary>
    private sealed class CountingSession(IConsumeSession inner, Action onResume) : IConsumeSession
    {
        public Task ResumeAsync(DrainClock clock)
        {
            onResume();
            return inner.ResumeAsync(clock);
        }

        public Task PauseAsync() => inner.PauseAsync();

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}

/// <summary>ChargePaymentConsumer's gateway call, nothing else.</summary>
public sealed class TrivialChargeConsumer(IPaymentGateway gateway) : IConsumer<ChargePayment>
{
    public Task Consume(ConsumeContext<ChargePayment> context) =>
        gateway.ChargeAsync(
            new ChargeRequest(context.Message.AccountId, context.Message.AmountMinor, context.Message.Currency),
            context.Message.PaymentId.ToString(),
            context.CancellationToken);
}
