using Conveyor.Contracts;
using Conveyor.Contracts.Webhooks;
using Conveyor.Worker.Messaging;
using MassTransit;

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
            endpointConfigurator, context, ConsumerName);
}
