using MassTransit;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.ServiceDefaults;

public static class MessagingExtensions
{
    public static RabbitMqOptions AddRabbitMqOptions(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<RabbitMqOptions>()
            .BindConfiguration(RabbitMqOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();
        return configuration.GetSection(RabbitMqOptions.SectionName).Get<RabbitMqOptions>() ?? new RabbitMqOptions();
    }

    /// <summary>
    /// Turns MassTransit's usage telemetry off (8.4 and later send it by default): five minutes after a bus starts,
    /// it would post a description of itself (host OS and time zone, MassTransit and .NET versions, its endpoints'
    /// names) to usage-tracking.masstransit.io. A service does not report to a third party unasked; an operator who
    /// wants to sets <c>MASSTRANSIT_USAGE_TELEMETRY=true</c>, which MassTransit reads over this.
    /// </summary>
    public static void WithoutUsageTelemetry(this IBusRegistrationConfigurator bus) => bus.DisableUsageTelemetry();

    /// <summary>Points a MassTransit bus at the configured broker, with publisher confirms on.</summary>
    public static void UseConveyorBroker(this IRabbitMqBusFactoryConfigurator cfg, RabbitMqOptions options, string connectionName)
    {
        cfg.Host(options.Host, (ushort)options.Port, options.VirtualHost, options.ClientName(connectionName), h =>
        {
            h.Username(options.Username);
            h.Password(options.Password);
            h.PublisherConfirmation = true;
            h.RequestedConnectionTimeout(TimeSpan.FromSeconds(options.ConnectTimeoutSeconds));
        });
    }
}
