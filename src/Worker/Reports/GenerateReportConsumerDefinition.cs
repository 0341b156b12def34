using Conveyor.Contracts;
using Conveyor.Contracts.Reports;
using Conveyor.Worker.Messaging;
using MassTransit;

namespace Conveyor.Worker.Reports;

public sealed class GenerateReportConsumerDefinition : ConsumerDefinition<GenerateReportConsumer>
{
    public const string ConsumerName = "GenerateReport";

    public GenerateReportConsumerDefinition() => EndpointName = JobKinds.GenerateReport;

    protected override void ConfigureConsumer(
        IReceiveEndpointConfigurator endpointConfigurator,
        IConsumerConfigurator<GenerateReportConsumer> consumerConfigurator,
        IRegistrationContext context) =>
        JobEndpointPipeline.Configure<GenerateReport>(
            endpointConfigurator, context, ConsumerName, InboxMode.Lease);
}
