using MassTransit;

namespace Conveyor.Worker.Hosting;

public static class ShutdownExtensions
{
    /// <summary>Orders the stop timeouts: consumer stop &lt; bus stop ≤ host shutdown.</summary>
    public static IServiceCollection AddOrderedShutdown(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<ShutdownOptions>()
            .BindConfiguration(ShutdownOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();
        var shutdown = configuration.GetSection(ShutdownOptions.SectionName).Get<ShutdownOptions>() ?? new ShutdownOptions();

        services.Configure<HostOptions>(host => host.ShutdownTimeout = TimeSpan.FromSeconds(shutdown.HostShutdownTimeoutSeconds));
        services.Configure<MassTransitHostOptions>(bus =>
        {
            // The host keeps running while the broker is away; /health/ready reports it.
            bus.WaitUntilStarted = false;
            bus.StopTimeout = TimeSpan.FromSeconds(shutdown.BusStopTimeoutSeconds);
            bus.ConsumerStopTimeout = TimeSpan.FromSeconds(shutdown.ConsumerStopTimeoutSeconds);
        });
        return services;
    }
}
