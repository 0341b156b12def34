using System.Net;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A kill switch restarts its paused endpoint from a timer. A worker that stops meanwhile (SIGTERM
/// during a downstream outage) must not start consuming again: not in the middle of its graceful
/// shutdown, and not after it, when a process that lives on would take messages it cannot handle.
/// Started again once the gateway is back, it charges every payment exactly once: whether a payment
/// was stored for a later attempt or waited in the paused queue, none is lost and none runs twice.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class KillSwitchShutdownTests(ConveyorFixture fixture)
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    [Fact]
    public async Task A_worker_stopped_while_its_kill_switch_pauses_an_endpoint_never_consumes_again_and_once_restarted_charges_each_payment_once()
    {
        await fixture.ResetAsync();
        // A vhost of its own: without the fix, the restarted endpoint would consume from the run's queues.
        await using var vhost = await fixture.ScratchVhostAsync("paused-stop");
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        var logs = new CapturedLogs();
        var settings = WorkerSettings.With(gateway).Override(
            ("RabbitMq:VirtualHost", vhost.Name),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            // Far beyond the stop: the failed payments are still stored when the worker starts again.
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "60000"),
            ("Consumers:ChargePayment:KillSwitchActivationThreshold", "1"),
            ("Consumers:ChargePayment:KillSwitchTripPercent", "1"),
            // Long enough for the stop below to come first even on a slow machine.
            ("Consumers:ChargePayment:KillSwitchRestartSeconds", "10"),
            ("Logging:LogLevel:Conveyor.Worker.Jobs", "Information"));
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));

        // The kill switch counts from the second attempt on (MassTransit: more attempts than the threshold).
        var payments = Enumerable.Range(0, 3).Select(_ => Guid.NewGuid()).ToList();
        await using (var producer = await RawAmqpProducer.ConnectAsync(fixture, vhost.Name))
        {
            foreach (var (paymentId, i) in payments.Select((id, i) => (id, i)))
            {
                await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
                    new { paymentId, accountId = "acct-paused-stop", amountMinor = 100 + i, currency = "EUR" });
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

        // The worker starts again with the gateway back. Its stored payments are made due rather than
        // waited for; those the paused endpoint never took are still in the queue.
        gateway.FailEverythingWith = null;
        await fixture.MakeScheduledMessagesDueAsync();
        await using var restarted = await fixture.StartWorkerAsync(settings);
        var keys = payments.Select(p => p.ToString()).ToList();
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var statuses = await db.Jobs.AsNoTracking().Where(j => keys.Contains(j.BusinessKey)).Select(j => j.Status).ToListAsync();
            Assert.Equal(payments.Count, statuses.Count(s => s == JobStatus.Succeeded));
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            Assert.Equal(0u, await fixture.ReadyAsync("charge-payment", vhost.Name));
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(60));
        await restarted.StopAsync();

        // Counted once the restarted worker has stopped, so nothing can add to them: one charge per
        // payment, each asked for once after the restart (a second run would be a second request).
        await using var check = fixture.CreateDbContext();
        Assert.All(keys, key => Assert.Equal(1, gateway.SuccessfulRequestsFor(key)));
        Assert.Equal(charged + payments.Count, gateway.TotalRequests);
        var ledger = await check.Ledger.AsNoTracking().Where(l => payments.Contains(l.PaymentId)).Select(l => l.PaymentId).ToListAsync();
        Assert.Equal(payments.Order(), ledger.Order());
        Assert.Equal(0u, await fixture.ReadyAsync("charge-payment", vhost.Name));
    }
}
