using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// The <c>broker</c> readiness check: Unhealthy while <see cref="BrokerPressureMonitor"/> has not read
/// the job queues for longer than <see cref="BrokerPressureMonitor.StaleAfter"/>. MassTransit's own
/// check of the Api's publish-only bus has no receive endpoint to watch and stays Healthy once the bus
/// has started, while every submission answers 503; this one follows the broker both ways.
/// </summary>
internal sealed class BrokerHealthCheck(BrokerPressureMonitor monitor) : IHealthCheck
{
    public const string Name = "broker";

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var age = monitor.DepthsAge;
        return Task.FromResult(age <= monitor.StaleAfter
            ? HealthCheckResult.Healthy($"RabbitMQ answered {age.TotalSeconds:F1} s ago")
            : new HealthCheckResult(context.Registration.FailureStatus,
                $"RabbitMQ has not answered for {age.TotalSeconds:F0} s, so job submissions answer 503: {monitor.LastFailure ?? "no reading yet"}"));
    }
}
