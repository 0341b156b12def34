using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Worker.Messaging;
using MassTransit;

namespace Conveyor.Worker.Payments;

public sealed class ChargePaymentConsumerDefinition : ConsumerDefinition<ChargePaymentConsumer>
{
    public const string ConsumerName = "ChargePayment";

    public ChargePaymentConsumerDefinition() => EndpointName = JobKinds.ChargePayment;

    protected override void ConfigureConsumer(
        IReceiveEndpointConfigurator endpointConfigurator,
        IConsumerConfigurator<ChargePaymentConsumer> consumerConfigurator,
        IRegistrationContext context) =>
        JobEndpointPipeline.Configure<ChargePayment>(
            endpointConfigurator, context, ConsumerName);
}
