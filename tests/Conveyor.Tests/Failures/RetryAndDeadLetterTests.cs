using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using System.Text.Json;

namespace Conveyor.Tests.Failures;

[Collection(ConveyorCollection.Name)]
public sealed class RetryAndDeadLetterTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_transient_failure_twice_then_success_has_one_effect_after_three_attempts()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailNext(2, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, ("Consumers:ChargePayment:RetryLimit", "3"), ("Consumers:ChargePayment:RetryMinIntervalMilliseconds", "50")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = Payment();

        await publisher.PublishAsync(payment);

        var job = await WaitForJobAsync(payment.PaymentId, JobStatus.Succeeded);
        Assert.Equal(3, job.Attempts);
        Assert.Null(job.LastError);
        Assert.Equal(3, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(1, gateway.SuccessfulRequestsFor(payment.PaymentId.ToString()));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == payment.PaymentId));
    }

    [Fact]
    public async Task A_permanent_failure_goes_to_the_error_queue_after_one_attempt_with_fault_headers()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.BadRequest;
        await using var worker = await fixture.StartWorkerAsync(Settings(null, ("Consumers:DeliverWebhook:RetryLimit", "3"), ("Consumers:DeliverWebhook:RedeliveryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "invoice.created",
            Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        var job = await WaitForJobAsync(webhook.WebhookId, JobStatus.DeadLettered);
        Assert.Equal(1, job.Attempts);
        Assert.Contains("400", job.LastError, StringComparison.Ordinal);
        Assert.Single(receiver.Deliveries);
        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await amqp.TakeAllAsync("deliver-webhook_error")));
        Assert.Equal("Conveyor.Worker.Failures.PermanentFailureException", dead!.Header("MT-Fault-ExceptionType"));
        Assert.Contains("400", dead.Header("MT-Fault-Message"), StringComparison.Ordinal);
        Assert.NotNull(dead.Header("MT-Fault-Timestamp"));
        Assert.Equal("deliver-webhook", dead.Header("Conveyor-Job-Kind"));
        // Published directly (no job id header): the _error message names the job row the worker created.
        Assert.Equal(job.Id.ToString(), dead.Header("Conveyor-Job-Id"));
        Assert.Equal("1", dead.Header("Conveyor-Attempts"));
        Assert.NotNull(dead.Header("Conveyor-First-Failure-At"));
        Assert.Contains("permanent", dead.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        using var body = JsonDocument.Parse(dead.Body);
        Assert.Equal(webhook.WebhookId, body.RootElement.GetProperty("message").GetProperty("webhookId").GetGuid());
    }

    [Fact]
    public async Task An_always_transient_failure_is_redelivered_at_the_configured_delays_then_dead_lettered()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.BadGateway;
        var requests = new List<DateTimeOffset>();
        gateway.OnRequest = () => { lock (requests) { requests.Add(DateTimeOffset.UtcNow); } };
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway,
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "2"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "1500"),
            ("Consumers:ChargePayment:RedeliveryFactor", "2"),
            ("Consumers:ChargePayment:RedeliveryJitter", "0.1")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = Payment();

        await publisher.PublishAsync(payment);

        // While it waits between attempts the job says so, with the time of the next attempt.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var waiting = await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString());
            Assert.Equal(JobStatus.RetryScheduled, waiting.Status);
            Assert.NotNull(waiting.NextAttemptAt);
            Assert.Contains("502", waiting.LastError, StringComparison.Ordinal);
        });
        var job = await WaitForJobAsync(payment.PaymentId, JobStatus.DeadLettered);
        Assert.Equal(3, job.Attempts);

        DateTimeOffset[] times;
        lock (requests)
        {
            times = [.. requests];
        }

        Assert.Equal(3, times.Length);
        // Never early: each gap is at least the configured delay less its jitter (and a little clock slack).
        Assert.True(times[1] - times[0] >= TimeSpan.FromMilliseconds(1500 * 0.9 - 50), $"first redelivery after {times[1] - times[0]}");
        Assert.True(times[2] - times[1] >= TimeSpan.FromMilliseconds(3000 * 0.9 - 50), $"second redelivery after {times[2] - times[1]}");
        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await amqp.TakeAllAsync("charge-payment_error")));
        Assert.Equal("2", dead!.Header("Conveyor-Redelivery-Attempt"));
        Assert.Equal("3", dead.Header("Conveyor-Attempts"));
        Assert.Equal(job.Id.ToString(), dead.Header("Conveyor-Job-Id"));
        Assert.Contains("transient", dead.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Equal(0, await check.Ledger.CountAsync());
    }

    [Fact]
    public async Task Scheduled_redeliveries_survive_a_worker_stop_and_are_delivered_by_the_next_worker()
    {
        const int payments = 10;
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        var settings = Settings(gateway,
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "3000"),
            ("Consumers:ChargePayment:KillSwitchTripPercent", "0"));
        await using var first = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var sent = Enumerable.Range(0, payments).Select(_ => Payment()).ToList();
        await Task.WhenAll(sent.Select(p => publisher.PublishAsync(p)));

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(payments, await db.ScheduledMessages.CountAsync());
        });
        await first.StopAsync();
        gateway.FailEverythingWith = null;

        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(payments, await db.ScheduledMessages.CountAsync());
            Assert.Equal(payments, await db.Jobs.CountAsync(j => j.Status == JobStatus.RetryScheduled));
        }

        await using var second = await fixture.StartWorkerAsync(settings);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(payments, await db.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
        }, () => PipelineState.DescribeAsync(fixture));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(payments, await check.Ledger.CountAsync());
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.All(sent, p => Assert.Equal(1, gateway.SuccessfulRequestsFor(p.PaymentId.ToString())));
    }

    private async Task<Job> WaitForJobAsync(Guid businessId, string status)
    {
        Job? job = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == businessId.ToString());
            Assert.Equal(status, job.Status);
        });
        return job!;
    }

    [Fact]
    public async Task A_transient_failure_of_a_message_with_odd_headers_is_still_stored_for_its_redelivery()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway,
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();
        var messageId = Guid.NewGuid();
        var envelope = new
        {
            messageId,
            messageType = new[] { "urn:message:Conveyor.Contracts.Payments:ChargePayment" },
            message = new { paymentId, accountId = "acct-odd", amountMinor = 900, currency = "EUR" },
        };

        // Another producer's headers: a NUL inside a value (PostgreSQL's jsonb refuses it) and a content
        // type whose parameters are longer than the stored column.
        await producer.PublishRawAsync(
            "Conveyor.Contracts.Payments:ChargePayment",
            JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web),
            $"{RawAmqpProducer.EnvelopeContentType}; note={new string('x', 200)}",
            messageId.ToString(),
            new Dictionary<string, string> { ["X-Trace-Note"] = "before\0after" });

        var job = await WaitForJobAsync(paymentId, JobStatus.RetryScheduled);
        Assert.Equal(1, job.Attempts);
        await using var check = fixture.CreateDbContext();
        var stored = await check.ScheduledMessages.SingleAsync();
        Assert.Equal(RawAmqpProducer.EnvelopeContentType, stored.ContentType);
        using var headers = JsonDocument.Parse(stored.Headers);
        Assert.Equal("beforeafter", headers.RootElement.GetProperty("X-Trace-Note").GetString());
    }

    private static Dictionary<string, string?> Settings(FakePaymentGateway? gateway, params (string Key, string Value)[] overrides) =>
        WorkerSettings.With(gateway).Override(overrides);

    private static ChargePayment Payment() => new()
    {
        PaymentId = Guid.NewGuid(),
        AccountId = "acct-failures",
        AmountMinor = 700,
        Currency = "EUR",
    };
}
