using System.Text.Json;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A remote side that drops our SYNs (a firewall, a partition, a full backlog) is an outage that may
/// pass: the attempt runs out of its timeout while connecting, and the job is redelivered later
/// instead of dead-lettered at once (MassTransit took the timeout for the consumer cancelling itself).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class UnansweredConnectTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_webhook_receiver_that_never_answers_the_connect_gets_a_redelivery_scheduled()
    {
        using var blackholed = await BlackholedListener.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:TimeoutSeconds", "2"),
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            // Far beyond the test: the job stays retry-scheduled once its attempt has ended.
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = new Uri(blackholed.BaseAddress, "/hooks"),
            EventType = "invoice.created",
            Payload = JsonDocument.Parse("""{"invoice":11}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        await AssertRetryScheduledAsync(webhook.WebhookId.ToString(), "timed out");
    }

    [Fact]
    public async Task A_payment_gateway_that_never_answers_the_connect_gets_a_redelivery_scheduled()
    {
        using var blackholed = await BlackholedListener.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("PaymentGateway:BaseUrl", blackholed.BaseAddress.ToString()),
            ("PaymentGateway:TimeoutSeconds", "2"),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "3"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-blackholed", AmountMinor = 1_100, Currency = "EUR" };

        await publisher.PublishAsync(payment);

        await AssertRetryScheduledAsync(payment.PaymentId.ToString(), "timed out");
    }

    private Task AssertRetryScheduledAsync(string businessKey, string error) =>
        Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == businessKey);
            Assert.Equal(JobStatus.RetryScheduled, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Contains(error, job.LastError, StringComparison.Ordinal);
            Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
}
