using MassTransit;
using Microsoft.Extensions.Options;

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
        // From the validated options: MassTransit checks its own pair when its hosted service is built, before
        // ValidateOnStart runs, and its refusal of a consumer stop past the bus stop named neither Shutdown setting.
        services.AddOptions<MassTransitHostOptions>().Configure<IOptions<ShutdownOptions>>((bus, validated) =>
        {
            // The host keeps running while the broker is away; /health/ready reports it.
            bus.WaitUntilStarted = false;
            bus.StopTimeout = TimeSpan.FromSeconds(validated.Value.BusStopTimeoutSeconds);
            bus.ConsumerStopTimeout = TimeSpan.FromSeconds(validated.Value.ConsumerStopTimeoutSeconds);
        });
        return services;
    }
}
