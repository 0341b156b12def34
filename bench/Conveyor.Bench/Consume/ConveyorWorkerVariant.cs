using Conveyor.Bench.Infrastructure;
using Conveyor.Worker;
using MassTransit;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Bench.Consume;

/// <summary>
/// The real worker (<see cref="WorkerApp.Build"/>): inbox transaction, job tracking, redelivery and
/// retry filters, ChargePaymentConsumer writing its ledger row; the gateway answers at once.
/// </summary>
public sealed class ConveyorWorkerVariant(
    BenchEnvironment environment,
    InstantGateway gateway,
    string name = "conveyor",
    IReadOnlyDictionary<string, string?>? overrides = null) : IConsumeVariant
{
    public string Name => name;

    public string Description => overrides is null
        ? "Conveyor worker (WorkerApp.Build): inbox + job row + ledger row per message, one transaction, synchronous_commit on"
        : $"Conveyor worker with {string.Join(", ", overrides.Select(o => $"{o.Key}={o.Value}"))}";

    /// <summary>
    /// A second Conveyor variant for tuning, from <c>CONVEYOR_BENCH_CONSUME_B="Section:Key=value;…"</c>:
    /// the same worker with those settings, interleaved with the others round by round.
    /// </summary>
    public static ConveyorWorkerVariant? FromEnvironment(BenchEnvironment environment, InstantGateway gateway)
    {
        if (Environment.GetEnvironmentVariable("CONVEYOR_BENCH_CONSUME_B") is not { Length: > 0 } spec)
        {
            return null;
        }

        var overrides = spec.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(pair => pair.Split('=', 2))
            .ToDictionary(pair => pair[0], pair => pair.Length == 2 ? pair[1] : null);
        return new ConveyorWorkerVariant(environment, gateway, "conveyor-b", overrides);
    }

    public async Task<IConsumeSession> OpenAsync(ConsumeSettings settings)
    {
        var values = Settings(environment, gateway, settings);
        foreach (var (key, value) in overrides ?? new Dictionary<string, string?>())
        {
            values[key] = value;
        }

        var app = WorkerApp.Build(BenchEnvironment.Args(values));
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
