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
