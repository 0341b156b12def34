using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.ServiceDefaults;
using MassTransit;

namespace Conveyor.Bench.Infrastructure;

/// <summary>"Another service": a plain MassTransit bus with publisher confirms, as other producers publish.</summary>
public sealed class ContractPublisher : IAsyncDisposable
{
    private readonly IBusControl _bus;

    private ContractPublisher(IBusControl bus) => _bus = bus;

    public static async Task<ContractPublisher> StartAsync(BenchEnvironment environment, string connectionName = "conveyor-bench-publisher")
    {
        var options = new RabbitMqOptions
        {
            Host = environment.RabbitHost,
            Port = environment.RabbitPort,
            VirtualHost = environment.VirtualHost,
            Username = environment.RabbitUser,
            Password = environment.RabbitPassword,
        };
        var bus = Bus.Factory.CreateUsingRabbitMq(cfg => cfg.UseConveyorBroker(options, connectionName));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await bus.StartAsync(timeout.Token);
        return new ContractPublisher(bus);
    }

    public static ChargePayment Payment(int i) => new()
    {
        PaymentId = Guid.NewGuid(),
        AccountId = $"acct-{i % 97:D4}",
        AmountMinor = 100 + i,
        Currency = "EUR",
    };

    /// <summary>
    /// Publishes one ChargePayment with a job id header, as the Api stamps it, and waits for its confirm. No job row is
    /// written first (the Api writes one): the worker creates it under the requested id, as for a command another service
    /// publishes directly with a <c>Conveyor-Job-Id</c> (README), which costs the batch one round trip more than a job the
    /// Api submitted (the claimed ids are locked and checked before the rows are written; bench/analysis.md §1).
    /// </summary>
    public Task PublishAsync(ChargePayment payment, CancellationToken cancellationToken = default) =>
        _bus.Publish(payment, context => context.Headers.Set(JobHeaders.JobId, Guid.CreateVersion7().ToString()), cancellationToken);

    /// <summary>Publishes <paramref name="count"/> payments, <paramref name="inFlight"/> unconfirmed at a time.</summary>
    public async Task PrefillAsync(int count, int inFlight = 256)
    {
        var next = -1;
        await Task.WhenAll(Enumerable.Range(0, inFlight).Select(async _ =>
        {
            while (Interlocked.Increment(ref next) is var i && i < count)
            {
                await PublishAsync(Payment(i));
            }
        }));
    }

    public async ValueTask DisposeAsync() => await _bus.StopAsync();
}
