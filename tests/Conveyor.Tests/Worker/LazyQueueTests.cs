using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The worker's classic job queues keep their messages on disk (lazy mode, the default of
/// <c>RabbitMq:LazyQueues</c>), and so do the <c>_error</c> and <c>_skipped</c> queues MassTransit
/// declares from them.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class LazyQueueTests(ConveyorFixture fixture)
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";
    private static readonly string[] JobQueues = ["charge-payment", "deliver-webhook", "generate-report"];

    [Fact]
    public async Task By_default_the_job_queues_and_their_error_and_skipped_queues_are_lazy()
    {
        await fixture.ResetAsync();
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        // An invalid charge goes to _error, a type nobody consumes to _skipped: MassTransit declares both then.
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new { paymentId = Guid.NewGuid(), accountId = "acct-lazy", amountMinor = -5, currency = "EUR" });
        await producer.PublishEnvelopeAsync(Exchange, "urn:message:Acme.Shipping:ShipOrder", new { orderId = 7 });

        string[] queues = [.. JobQueues, "charge-payment_error", "charge-payment_skipped"];
        await Eventually.AssertAsync(async () =>
        {
            foreach (var queue in queues)
            {
                var (argument, effective) = await fixture.Rabbit.QueueModeAsync(fixture.VirtualHost, queue);
                Assert.True(argument == "lazy", $"{queue}: x-queue-mode is '{argument}'");
                // What the broker itself runs, not only what was asked.
                Assert.True(effective == "lazy", $"{queue}: the broker reports mode '{effective}'");
            }
        }, TimeSpan.FromSeconds(30));

        await fixture.Rabbit.PurgeAsync(fixture.VirtualHost, "charge-payment_error");
        await fixture.Rabbit.PurgeAsync(fixture.VirtualHost, "charge-payment_skipped");
    }

    [Fact]
    public async Task With_lazy_queues_off_the_worker_declares_its_job_queues_in_the_default_mode()
    {
        // A vhost of its own: RabbitMQ cannot redeclare the run's lazy queues in another mode.
        var vhost = fixture.VirtualHost + "-default-mode";
        await fixture.Rabbit.CreateVhostAsync(vhost, fixture.Servers.RabbitUser);
        try
        {
            var settings = WorkerSettings.With();
            settings["RabbitMq:VirtualHost"] = vhost;
            settings["RabbitMq:LazyQueues"] = "false";
            await using var worker = await fixture.StartWorkerAsync(settings);

            await Eventually.AssertAsync(async () =>
            {
                foreach (var queue in JobQueues)
                {
                    var (argument, effective) = await fixture.Rabbit.QueueModeAsync(vhost, queue);
                    Assert.Null(argument);
                    Assert.True(effective == "default", $"{queue}: the broker reports mode '{effective}'");
                }
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            await fixture.Rabbit.DeleteVhostAsync(vhost);
        }
    }
}
