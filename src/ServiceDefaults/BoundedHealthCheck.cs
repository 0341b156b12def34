using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// A check that answers its registration's failure status once <paramref name="timeout"/> has passed,
/// whether or not the check it wraps has noticed its cancellation: a query on a connection that stopped
/// answering only gives up after Npgsql's own cancellation timeout, longer than a probe waits.
/// </summary>
internal sealed class BoundedHealthCheck(IHealthCheck inner, TimeSpan timeout) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        using var bounded = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        bounded.CancelAfter(timeout);
        var check = inner.CheckHealthAsync(context, bounded.Token);
        try
        {
            return await check.WaitAsync(bounded.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            // The wrapped check finishes on its own; what it says then is not waited for.
            check.Abandon();
            return new HealthCheckResult(context.Registration.FailureStatus,
                $"No answer within {timeout.TotalSeconds:0.#} s: the check's server is not answering (a failover, a network that drops packets, no free connection)");
        }
    }
}
