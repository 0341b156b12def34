using Conveyor.Contracts;
using Conveyor.Contracts.Webhooks;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Redelivery;
using MassTransit;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Webhooks;

public sealed class DeliverWebhookConsumerDefinition : ConsumerDefinition<DeliverWebhookConsumer>
{
    public const string ConsumerName = "DeliverWebhook";

    public DeliverWebhookConsumerDefinition() => EndpointName = JobKinds.DeliverWebhook;

    protected override void ConfigureConsumer(
        IReceiveEndpointConfigurator endpointConfigurator,
        IConsumerConfigurator<DeliverWebhookConsumer> consumerConfigurator,
        IRegistrationContext context) =>
        JobEndpointPipeline.Configure<DeliverWebhook>(
            endpointConfigurator, context, ConsumerName, admission: new WebhookOriginLimitFilter(
                context.GetRequiredService<WebhookOriginSlots>(),
                context.GetRequiredService<WebhookOriginLeases>(),
                context.GetRequiredService<RedeliveryStore>(),
                context.GetRequiredService<RedeliverySeal>(),
                context.GetRequiredService<JobDescriptor<DeliverWebhook>>(),
                context.GetRequiredService<JobMetrics>(),
                context.GetRequiredService<IOptions<WebhookOptions>>().Value,
                context.GetRequiredService<ILoggerFactory>().CreateLogger("Conveyor.Worker.Jobs")));
}
