using System.Net;
using System.Text.Json;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

[Collection(ConveyorCollection.Name)]
public sealed class DownstreamOutageTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_gateway_outage_pauses_the_endpoint_instead_of_dead_lettering_and_work_resumes_when_it_is_back()
    {
        const int payments = 40;
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        var settings = WorkerSettings.With(gateway);
        settings["Consumers:ChargePayment:PrefetchCount"] = "4";
        settings["Consumers:ChargePayment:ConcurrentMessageLimit"] = "2";
        settings["Consumers:ChargePayment:RetryLimit"] = "0";
        settings["Consumers:ChargePayment:RedeliveryLimit"] = "8";
        settings["Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds"] = "1000";
        settings["Consumers:ChargePayment:RedeliveryFactor"] = "1.5";
        settings["Consumers:ChargePayment:RedeliveryMaxDelayMilliseconds"] = "4000";
        settings["Consumers:ChargePayment:KillSwitchActivationThreshold"] = "5";
        settings["Consumers:ChargePayment:KillSwitchTripPercent"] = "20";
        settings["Consumers:ChargePayment:KillSwitchTrackingPeriodSeconds"] = "30";
        // Long enough a pause to observe (counted exactly, over AMQP) on a slow machine.
        settings["Consumers:ChargePayment:KillSwitchRestartSeconds"] = "8";
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var sent = Enumerable.Range(0, payments).Select(i => new ChargePayment
        {
            PaymentId = Guid.NewGuid(),
            AccountId = "acct-outage",
            AmountMinor = 100 + i,
            Currency = "EUR",
        }).ToList();

        await Task.WhenAll(sent.Select(p => publisher.PublishAsync(p)));

        // The kill switch trips: the endpoint stops consuming, and most messages wait in the queue untried.
        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(0u, await fixture.ConsumersAsync("charge-payment"));
            Assert.True(await fixture.ReadyAsync("charge-payment") > 0, "nothing waits in the queue");
        }, TimeSpan.FromSeconds(30));
        Assert.True(gateway.DistinctKeysRequested < payments / 2,
            $"{gateway.DistinctKeysRequested} of {payments} payments were tried during the outage: it burned through the queue");

        gateway.FailEverythingWith = null;

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(payments, await db.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromMinutes(2));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(0, await check.Jobs.CountAsync(j => j.Status == JobStatus.DeadLettered));
        Assert.Equal(payments, await check.Ledger.CountAsync());
        // Refused until the gateway was back, then charged by one successful request each.
        Assert.All(sent, p => Assert.Equal(1, gateway.SuccessfulRequestsFor(p.PaymentId.ToString())));
    }

    [Fact]
    public async Task One_failing_webhook_receiver_does_not_pause_the_deliveries_to_the_others()
    {
        const int webhooks = 30;
        await using var failing = await FakeWebhookReceiver.StartAsync();
        failing.AnswerWith = HttpStatusCode.ServiceUnavailable;
        await using var healthy = await FakeWebhookReceiver.StartAsync();
        // The kill switch's thresholds left at their defaults; a pause, were there one, would last longer
        // than the waits below, so that the webhooks could not be delivered after one. The limit per origin
        // as wide as the endpoint (16): this is the kill switch's test, and with the default 4 the failing
        // receiver's 60 webhooks, each retried in memory, take longer than the waits below to be refused
        // (WebhookOriginLimitTests covers the limit).
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With()
            .Override(("Consumers:DeliverWebhook:KillSwitchRestartSeconds", "600"), ("Webhooks:MaxConcurrentPerOrigin", "16")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        // One customer's receiver is down: every webhook to it fails, far past the kill switch's threshold.
        var refused = Enumerable.Range(0, webhooks).Select(i => Webhook(failing, i)).ToList();
        await Task.WhenAll(refused.Select(w => publisher.PublishAsync(w)));
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(webhooks, await db.Jobs.CountAsync(j => j.Status == JobStatus.RetryScheduled));
        }, () => PipelineState.DescribeAsync(fixture));

        // The other customers' webhooks, with more to the failing receiver among them, are delivered
        // all the same, with the endpoint consuming throughout.
        var delivered = Enumerable.Range(0, webhooks).Select(i => Webhook(healthy, i)).ToList();
        var refusedAgain = Enumerable.Range(webhooks, webhooks).Select(i => Webhook(failing, i)).ToList();
        await Task.WhenAll(delivered.Zip(refusedAgain)
            .SelectMany(pair => new[] { publisher.PublishAsync(pair.First), publisher.PublishAsync(pair.Second) }));
        var deliveredIds = delivered.Select(w => w.WebhookId.ToString()).ToList();
        var refusedIds = refusedAgain.Select(w => w.WebhookId.ToString()).ToList();
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(webhooks, await db.Jobs.CountAsync(j => deliveredIds.Contains(j.BusinessKey) && j.Status == JobStatus.Succeeded));
            Assert.Equal(webhooks, await db.Jobs.CountAsync(j => refusedIds.Contains(j.BusinessKey) && j.Status == JobStatus.RetryScheduled));
        }, () => PipelineState.DescribeAsync(fixture));
        Assert.Equal(webhooks, healthy.Deliveries.Count);
        Assert.Equal(1u, await fixture.ConsumersAsync("deliver-webhook"));
    }

    private static DeliverWebhook Webhook(FakeWebhookReceiver receiver, int number) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = receiver.Url(),
        EventType = "invoice.created",
        Payload = JsonDocument.Parse($$"""{"invoice":{{number}}}""").RootElement,
    };
}
