using System.Net;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A kill switch restarts its paused endpoint from a timer. A worker that stops meanwhile (SIGTERM
/// during a downstream outage) must not start consuming again: not in the middle of its graceful
/// shutdown, and not after it, when a process that lives on would take messages it cannot handle.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class KillSwitchShutdownTests(ConveyorFixture fixture)
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    [Fact]
    public async Task A_worker_stopped_while_its_kill_switch_pauses_an_endpoint_never_consumes_again()
    {
        await fixture.ResetAsync();
        // A vhost of its own: without the fix, the restarted endpoint would consume from the run's queues.
        await using var vhost = await fixture.ScratchVhostAsync("paused-stop");
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        var logs = new CapturedLogs();
        await using var worker = await fixture.StartWorkerAsync(
            WorkerSettings.With(gateway).Override(
                ("RabbitMq:VirtualHost", vhost.Name),
                ("Consumers:ChargePayment:RetryLimit", "0"),
                ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "60000"),
                ("Consumers:ChargePayment:KillSwitchActivationThreshold", "1"),
                ("Consumers:ChargePayment:KillSwitchTripPercent", "1"),
                // Long enough for the stop below to come first even on a slow machine.
                ("Consumers:ChargePayment:KillSwitchRestartSeconds", "10"),
                ("Logging:LogLevel:Conveyor.Worker.Jobs", "Information")),
            builder => builder.Logging.AddProvider(logs));

        await using (var producer = await RawAmqpProducer.ConnectAsync(fixture, vhost.Name))
        {
            // The kill switch counts from the second attempt on (MassTransit: more attempts than the threshold).
            for (var i = 0; i < 3; i++)
            {
                await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
                    new { paymentId = Guid.NewGuid(), accountId = "acct-paused-stop", amountMinor = 100 + i, currency = "EUR" });
            }
        }

        // The gateway's 503s tripped the kill switch: the endpoint is paused, the failed messages stored for later.
        await Eventually.AssertAsync(async () =>
        {
            Assert.InRange(gateway.TotalRequests, 2, 3);
            Assert.Equal(0u, await fixture.ConsumersAsync("charge-payment", vhost.Name));
        }, TimeSpan.FromSeconds(30));

        await worker.StopAsync();
        // Counted once stopped: a message already in the consumer when the switch paused the endpoint
        // reaches the gateway after the pause (a full run on a busy machine saw 2, then 3).
        var charged = gateway.TotalRequests;

        // The restart comes when its time is up, and is declined.
        await Eventually.AssertAsync(
            () =>
            {
                Assert.Contains(logs.Of(LogLevel.Information, "Conveyor.Worker.Jobs"),
                    e => e.Message == "Kill switch: charge-payment stays stopped, the worker is stopping");
                return Task.CompletedTask;
            },
            async () => $"consumers of charge-payment: {await fixture.ConsumersAsync("charge-payment", vhost.Name)}",
            TimeSpan.FromSeconds(60));
        Assert.Equal(0u, await fixture.ConsumersAsync("charge-payment", vhost.Name));
        await Eventually.AssertAsync(async () => Assert.Empty(await fixture.Rabbit.ConnectionsAsync(vhost.Name)), TimeSpan.FromSeconds(30));
        Assert.Equal(charged, gateway.TotalRequests);
    }
}
