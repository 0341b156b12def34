using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Conveyor.Api.Backpressure;

/// <summary>
/// The <c>broker</c> readiness check: Unhealthy until <see cref="BrokerPressureMonitor"/> has read the
/// job queues once, and while it has not read them for longer than <see cref="BrokerPressureMonitor.StaleAfter"/>.
/// MassTransit's own check of the Api's publish-only bus has no receive endpoint to watch and stays
/// Healthy once the bus has started, while every submission answers 503; this one follows the broker
/// both ways. Before the first reading the reading's age counts from the start of the process, which
/// is no answer from RabbitMQ: taken for one, an Api that had never reached the broker said
/// "RabbitMQ answered 2.3 s ago" for its first five refresh periods.
/// </summary>
internal sealed class BrokerHealthCheck(BrokerPressureMonitor monitor) : IHealthCheck
{
    public const string Name = "broker";

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var age = monitor.DepthsAge;
        return Task.FromResult(
            !monitor.HasReadDepths
                ? new HealthCheckResult(context.Registration.FailureStatus,
                    $"RabbitMQ has not answered since the Api started {age.TotalSeconds:F0} s ago: {monitor.LastFailure ?? "no reading yet"}")
            : age <= monitor.StaleAfter
                ? HealthCheckResult.Healthy($"RabbitMQ answered {age.TotalSeconds:F1} s ago")
                : new HealthCheckResult(context.Registration.FailureStatus,
                    $"RabbitMQ has not answered for {age.TotalSeconds:F0} s, so job submissions answer 503: {monitor.LastFailure ?? "no reading yet"}"));
    }
}
