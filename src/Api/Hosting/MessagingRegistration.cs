using Conveyor.ServiceDefaults;
using MassTransit;

namespace Conveyor.Api.Hosting;

internal static class MessagingRegistration
{
    /// <summary>A publish-only bus: the Api declares no receive endpoints.</summary>
    public static IServiceCollection AddApiMessaging(this IServiceCollection services, IConfiguration configuration)
    {
        var options = services.AddRabbitMqOptions(configuration);

        services.AddMassTransit(x =>
        {
            x.WithoutUsageTelemetry();
            x.UsingRabbitMq((_, cfg) => cfg.UseConveyorBroker(options, "conveyor-api"));
        });
        services.AddBusStartGuard();

        services.AddOptions<MassTransitHostOptions>().Configure(host =>
        {
            // Serve /health/live and answer 503s while the broker is down, instead of failing to start.
            host.WaitUntilStarted = false;
            // A bus that cannot reach the broker must not hold up shutdown for long.
            host.StopTimeout = TimeSpan.FromSeconds(options.ConnectTimeoutSeconds * 2);
        });

        return services;
    }
}
