using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using System.Text.Json;

namespace Conveyor.ServiceDefaults;

public static class HealthExtensions
{
    public const string ReadyTag = "ready";

    /// <summary>
    /// On a readiness check whose Degraded is information, not unreadiness (the worker's
    /// <c>scheduled-messages</c>, <c>consuming</c> while a kill switch pauses some endpoints, and
    /// <c>masstransit-bus</c>): its Degraded still answers 200. Any other check's Degraded answers 503:
    /// by default (ASP.NET Core's mapping) every Degraded answered 200, so a worker whose bus said
    /// "Degraded Endpoints: ..." for want of a broker, consuming nothing, looked ready.
    /// </summary>
    public const string AdvisoryTag = "advisory";

    /// <summary>
    /// How long a check may take before it counts as failed: under the probes' own timeouts (2 s for
    /// the Api's startup probe, 3 s for the worker's readiness), so that a database or broker that
    /// stops answering without closing anything (a failover, a network black hole, an exhausted pool)
    /// gives a 503 that names the check, and its warning in the log, instead of a probe the kubelet
    /// abandons with no reason anywhere.
    /// </summary>
    public static readonly TimeSpan CheckTimeout = TimeSpan.FromSeconds(1.5);

    /// <summary>Readiness = the bus (MassTransit registers its own check, tagged ready) and the database.</summary>
    public static IServiceCollection AddConveyorHealthChecks(this IServiceCollection services)
    {
        services.AddSingleton<HealthTransitions>();
        services.AddSingleton<DatabaseHealthCheck.SchemaSeen>();
        services.AddHealthChecks()
            .AddCheck<DatabaseHealthCheck>("database", HealthStatus.Unhealthy, [ReadyTag]);
        // Every check, whoever registered it (MassTransit's too), and after all of them are added.
        services.PostConfigure<HealthCheckServiceOptions>(options =>
        {
            foreach (var registration in options.Registrations)
            {
                var create = registration.Factory;
                registration.Factory = provider => new BoundedHealthCheck(create(provider), CheckTimeout);
            }
        });
        return services;
    }

    /// <summary>
    /// Makes MassTransit's bus check (<c>masstransit-bus</c>) advisory, for a host whose readiness
    /// <see cref="ConsumingHealthCheck"/> decides. Done on the registration MassTransit adds, after it.
    /// </summary>
    public static IServiceCollection MarkBusHealthCheckAdvisory(this IServiceCollection services)
    {
        services.PostConfigure<HealthCheckServiceOptions>(options =>
        {
            foreach (var registration in options.Registrations.Where(r => r.Name == BusCheckName))
            {
                registration.Tags.Add(AdvisoryTag);
            }
        });
        return services;
    }

    /// <summary>The name MassTransit gives its check of the default bus.</summary>
    public const string BusCheckName = "masstransit-bus";

    /// <summary><c>/health/live</c>: the process answers. <c>/health/ready</c>: bus and database are usable.</summary>
    public static IEndpointRouteBuilder MapConveyorHealthEndpoints(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapHealthChecks("/health/live", new HealthCheckOptions
        {
            Predicate = _ => false,
            ResponseWriter = WriteResponse,
        });
        endpoints.MapHealthChecks("/health/ready", new HealthCheckOptions
        {
            Predicate = check => check.Tags.Contains(ReadyTag),
            ResponseWriter = WriteReadiness,
        });
        return endpoints;
    }

    /// <summary>503 when a check is Unhealthy, or Degraded without <see cref="AdvisoryTag"/>; otherwise 200.</summary>
    public static bool IsReady(HealthReport report) =>
        report.Entries.Values.All(e => e.Status == HealthStatus.Healthy
            || e.Status == HealthStatus.Degraded && e.Tags.Contains(AdvisoryTag));

    /// <summary>The entry's description, or else its exception's cause (bounded, no secrets).</summary>
    internal static string? ReasonOf(HealthReportEntry entry) =>
        entry.Description ?? (entry.Exception is { } exception ? HealthReasons.Describe(exception) : null);

    private static Task WriteReadiness(HttpContext context, HealthReport report)
    {
        context.RequestServices.GetRequiredService<HealthTransitions>().Observe(report);
        // The middleware has set the status code from report.Status alone, which lets every Degraded through.
        context.Response.StatusCode = IsReady(report) ? StatusCodes.Status200OK : StatusCodes.Status503ServiceUnavailable;
        return WriteResponse(context, report);
    }

    private static Task WriteResponse(HttpContext context, HealthReport report)
    {
        context.Response.ContentType = "application/json";
        var body = new
        {
            status = report.Status.ToString(),
            checks = report.Entries.ToDictionary(
                e => e.Key,
                e => new { status = e.Value.Status.ToString(), description = ReasonOf(e.Value) }),
        };
        return context.Response.WriteAsync(JsonSerializer.Serialize(body));
    }
}
