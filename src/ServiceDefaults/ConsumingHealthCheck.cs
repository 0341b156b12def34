using MassTransit;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// The <c>consuming</c> readiness check of a host with receive endpoints: Unhealthy when none of them
/// is consuming (the broker is out of reach, or the bus has not started), Degraded while only some are
/// (a kill switch paused an endpoint for a downstream outage, by design: the pod still consumes its
/// other queues), Healthy otherwise. MassTransit's own bus check says Degraded in both of the first
/// two cases, so the worker marks it advisory (<see cref="HealthExtensions.MarkBusHealthCheckAdvisory"/>); this
/// one is Unhealthy, or Degraded as advisory, and so decides readiness.
/// </summary>
public sealed class ConsumingHealthCheck(IBusControl bus) : IHealthCheck
{
    public const string Name = "consuming";

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var health = bus.CheckHealth();
        // The bus's own (response) endpoint consumes no job queue.
        var endpoints = health.Endpoints.Where(e => !string.Equals(e.Key, bus.Address.ToString(), StringComparison.OrdinalIgnoreCase)).ToList();
        var stopped = endpoints
            .Where(e => e.Value.Status != BusHealthStatus.Healthy)
            .Select(e => $"{e.Key[(e.Key.LastIndexOf('/') + 1)..]} ({e.Value.Status}{(string.IsNullOrEmpty(e.Value.Description) ? "" : $": {e.Value.Description}")})")
            .ToList();
        string Listed() => HealthReasons.Bounded(string.Join("; ", stopped));

        HealthCheckResult result;
        if (health.Status == BusHealthStatus.Unhealthy || endpoints.Count == 0)
        {
            result = health.Status == BusHealthStatus.Healthy
                ? HealthCheckResult.Healthy(health.Description)
                : new HealthCheckResult(context.Registration.FailureStatus, HealthReasons.Bounded($"The bus is {health.Status}: {health.Description}"));
        }
        else if (stopped.Count == endpoints.Count)
        {
            result = new HealthCheckResult(context.Registration.FailureStatus, $"No receive endpoint consumes: {Listed()}");
        }
        else
        {
            result = stopped.Count == 0
                ? HealthCheckResult.Healthy($"All {endpoints.Count} receive endpoints consume")
                : HealthCheckResult.Degraded($"Paused or failing receive endpoints (the others consume): {Listed()}");
        }

        return Task.FromResult(result);
    }
}
