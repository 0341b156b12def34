using Conveyor.Contracts.Reports;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Webhooks;
using Microsoft.EntityFrameworkCore;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Worker;

/// <summary>Commands that reach the worker without the Api: raw AMQP envelopes and plain MassTransit.</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class OtherProducersTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
        _worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
    }

    public async Task DisposeAsync()
    {
        await _worker.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    [Fact]
    public async Task A_raw_amqp_client_publishing_a_masstransit_envelope_gets_its_payment_charged_once()
    {
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();
        var message = new { paymentId, accountId = "acct-raw", amountMinor = 4200, currency = "GBP" };

        // Published twice, as a producer retrying after a lost confirm would.
        await producer.PublishEnvelopeAsync("Conveyor.Contracts.Payments:ChargePayment", "urn:message:Conveyor.Contracts.Payments:ChargePayment", message);
        await producer.PublishEnvelopeAsync("Conveyor.Contracts.Payments:ChargePayment", "urn:message:Conveyor.Contracts.Payments:ChargePayment", message);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var ledger = await db.Ledger.SingleAsync(l => l.PaymentId == paymentId);
            Assert.Equal(4200, ledger.AmountMinor);
            Assert.Equal("GBP", ledger.Currency);
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == paymentId.ToString())).Status);
        });
        // Both copies handled, the worker stopped: the second copy did not run the charge again.
        await fixture.AssertDrainedAsync(_worker, "charge-payment");
        Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString()));
    }

    [Fact]
    public async Task A_webhook_is_posted_once_with_a_valid_signature_and_recorded()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url("/hooks/orders"),
            EventType = "order.paid",
            Payload = JsonDocument.Parse("""{"orderId":42,"total":"10.00"}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var delivery = await db.WebhookDeliveries.SingleAsync(d => d.WebhookId == webhook.WebhookId);
            Assert.Equal(204, delivery.StatusCode);
        });
        var received = Assert.Single(receiver.Deliveries);
        Assert.Equal("/hooks/orders", received.Path);
        Assert.Equal("order.paid", received.Headers["Conveyor-Event-Type"]);
        Assert.Equal(webhook.WebhookId.ToString(), received.Headers["Idempotency-Key"]);
        using var body = JsonDocument.Parse(received.Body);
        Assert.Equal(42, body.RootElement.GetProperty("orderId").GetInt32());
        var signature = received.Headers[WebhookSignature.HeaderName];
        var id = received.Headers[WebhookSender.WebhookIdHeader];
        var key = received.Headers["Idempotency-Key"];
        var eventType = received.Headers[WebhookSender.EventTypeHeader];
        var now = DateTimeOffset.UtcNow;
        Assert.True(WebhookSignature.Verify(WorkerSettings.SigningSecret, signature, id, key, eventType, received.Body, now));
        Assert.False(WebhookSignature.Verify("another-secret-entirely", signature, id, key, eventType, received.Body, now));
        Assert.False(WebhookSignature.Verify(WorkerSettings.SigningSecret, signature, id, key, eventType, Encoding.UTF8.GetBytes("{}"), now));
        // A captured delivery sent again under a fresh id or key (past the receiver's deduplication) or as another event.
        Assert.False(WebhookSignature.Verify(WorkerSettings.SigningSecret, signature, id, $"{key}:replayed", eventType, received.Body, now));
        Assert.False(WebhookSignature.Verify(WorkerSettings.SigningSecret, signature, Guid.NewGuid().ToString(), key, eventType, received.Body, now));
        Assert.False(WebhookSignature.Verify(WorkerSettings.SigningSecret, signature, id, key, "order.refunded", received.Body, now));
        // Or later than the receiver's tolerance.
        Assert.False(WebhookSignature.Verify(WorkerSettings.SigningSecret, signature, id, key, eventType, received.Body, now.AddMinutes(10)));
    }

    [Fact]
    public async Task A_webhook_whose_event_type_cannot_be_a_header_goes_to_error_after_one_attempt_with_the_reason()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "commande.créée",
            Payload = JsonDocument.Parse("""{"orderId":42}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        // Refused before any request: HttpClient could not send the header, and would have looked transient.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == webhook.WebhookId.ToString());
            Assert.Equal(JobStatus.DeadLettered, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Contains("eventType", job.LastError, StringComparison.Ordinal);
        }, () => PipelineState.DescribeAsync(fixture));
        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await amqp.TakeAllAsync("deliver-webhook_error")));
        Assert.StartsWith("Invalid DeliverWebhook: eventType: May contain only printable ASCII", dead!.Header("MT-Fault-Message"), StringComparison.Ordinal);
        Assert.Equal("1", dead.Header("Conveyor-Attempts"));
        Assert.Contains("permanent", dead.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Empty(receiver.Deliveries);
    }

    [Fact]
    public async Task A_report_totals_the_ledger_per_currency_and_reaches_full_progress()
    {
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payments = Enumerable.Range(1, 30).Select(i => new Conveyor.Contracts.Payments.ChargePayment
        {
            PaymentId = Guid.NewGuid(),
            AccountId = "acct-report",
            AmountMinor = i * 100,
            Currency = i % 3 == 0 ? "USD" : "EUR",
        }).ToList();
        await Task.WhenAll(payments.Select(p => publisher.PublishAsync(p)));
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(30, await db.Ledger.CountAsync(l => l.AccountId == "acct-report"));
        });

        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-report", PageSize = 7 };
        await publisher.PublishAsync(report);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == report.ReportId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
            Assert.Equal(100, job.Progress);
        });
        await using var check = fixture.CreateDbContext();
        var stored = await check.Reports.SingleAsync(r => r.ReportId == report.ReportId);
        Assert.Equal(30, stored.RowsScanned);
        using var totals = JsonDocument.Parse(stored.Totals);
        var byCurrency = totals.RootElement.EnumerateArray().ToDictionary(
            t => t.GetProperty("currency").GetString()!,
            t => (Count: t.GetProperty("count").GetInt64(), Total: t.GetProperty("totalMinor").GetInt64()));
        Assert.Equal((10L, payments.Where(p => p.Currency == "USD").Sum(p => p.AmountMinor)), byCurrency["USD"]);
        Assert.Equal((20L, payments.Where(p => p.Currency == "EUR").Sum(p => p.AmountMinor)), byCurrency["EUR"]);
    }
}
