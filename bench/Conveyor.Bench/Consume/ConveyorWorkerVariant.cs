using Conveyor.Bench.Infrastructure;
using Conveyor.Worker;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Bench.Consume;

/// <summary>
/// The real worker (<see cref="WorkerApp.Build"/>): inbox transaction, job tracking, redelivery and
/// retry filters, ChargePaymentConsumer writing its ledger row; the gateway answers at once.
/// </summary>
public sealed class ConveyorWorkerVariant(BenchEnvironment environment, InstantGateway gateway) : IConsumeVariant
{
    public string Name => "conveyor";

    public string Description => "Conveyor worker (WorkerApp.Build): inbox + job row + ledger row per message, one transaction, synchronous_commit on";

    public async Task<IConsumeSession> OpenAsync(ConsumeSettings settings)
    {
        var app = WorkerApp.Build(BenchEnvironment.Args(Settings(environment, gateway, settings)));
        return await EndpointSession.StartPausedAsync(
            app.Services.GetRequiredService<IBus>(),
            ConsumeBenchmark.Queue,
            () => app.StartAsync(),
            async () =>
            {
                await app.StopAsync();
                await app.DisposeAsync();
            });
    }

    public static Dictionary<string, string?> Settings(BenchEnvironment environment, InstantGateway gateway, ConsumeSettings settings)
    {
        var values = environment.BaseSettings(settings.PoolSize);
        values["PaymentGateway:BaseUrl"] = gateway.BaseAddress.ToString();
        // The in-process host reads no worker appsettings.json, so required settings come from here.
        values["Webhooks:SigningSecret"] = "bench-only-webhook-secret-0123456789";
        values["Consumers:ChargePayment:PrefetchCount"] = settings.Prefetch.ToString(System.Globalization.CultureInfo.InvariantCulture);
        values["Consumers:ChargePayment:ConcurrentMessageLimit"] = settings.Concurrency.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return values;
    }

    public async Task VerifyAsync(int messages)
    {
        var ledger = await environment.ScalarAsync("SELECT count(*) FROM ledger_entries");
        var succeeded = await environment.ScalarAsync("SELECT count(*) FROM jobs WHERE status = 'succeeded'");
        var attempts = await environment.ScalarAsync("SELECT coalesce(sum(attempts), 0) FROM jobs");
        if (ledger != messages || succeeded != messages || attempts != messages)
        {
            throw new InvalidOperationException($"conveyor: {ledger} ledger rows, {succeeded} succeeded jobs and {attempts} attempts for {messages} messages");
        }
    }
}
