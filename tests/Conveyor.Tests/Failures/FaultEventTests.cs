using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using RabbitMQ.Client;

namespace Conveyor.Tests.Failures;

/// <summary>
/// MassTransit's <c>Fault&lt;ChargePayment&gt;</c> event, which other services may subscribe to, means the
/// message has failed for good: none for attempts that are retried and end in success, one when the
/// message goes to <c>_error</c>.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class FaultEventTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "charge-payment";
    private const string FaultExchange = "MassTransit:Fault--Conveyor.Contracts.Payments:ChargePayment--";
    private const string Subscriber = "charge-payment-fault-subscriber";

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        // A subscriber of Fault<ChargePayment>, bound as MassTransit binds one (fanout exchange per message type).
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-fault-subscriber");
        await using var channel = await connection.CreateChannelAsync();
        await channel.ExchangeDeclareAsync(FaultExchange, ExchangeType.Fanout, durable: true);
        await channel.QueueDeclareAsync(Subscriber, durable: true, exclusive: false, autoDelete: false);
        await channel.QueueBindAsync(Subscriber, FaultExchange, string.Empty);
    }

    public async Task DisposeAsync()
    {
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-fault-subscriber");
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeleteAsync(Subscriber);
    }

    [Fact]
    public async Task A_job_that_succeeds_after_two_transient_failures_publishes_no_fault()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailNext(2, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = NewPayment();

        await publisher.PublishAsync(payment);

        await WaitForStatusAsync(payment, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(3, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(0u, await fixture.ReadyAsync(Subscriber));
    }

    [Fact]
    public async Task A_job_dead_lettered_after_its_retries_publishes_one_fault()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        // Transient twice (retried in memory), then refused for good.
        gateway.FailNext(2, HttpStatusCode.ServiceUnavailable);
        gateway.FailNext(1, HttpStatusCode.UnprocessableEntity);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = NewPayment();

        await publisher.PublishAsync(payment);

        await WaitForStatusAsync(payment, JobStatus.DeadLettered);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(3, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(1u, await fixture.ReadyAsync(Queue + "_error"));
        Assert.Equal(1u, await fixture.ReadyAsync(Subscriber));
    }

    [Fact]
    public async Task A_fault_event_names_the_failure_of_the_last_attempt_not_an_earlier_ones()
    {
        var payment = NewPayment();
        var key = payment.PaymentId.ToString();
        await using (var db = fixture.CreateDbContext())
        {
            // The claim of this job once it has been attempted (the in-memory retry's) fails for good.
            var sql = """
                CREATE FUNCTION fail_second_claim() RETURNS trigger LANGUAGE plpgsql AS $f$
                BEGIN
                    IF NEW.message_key = '@key' AND EXISTS (SELECT 1 FROM jobs WHERE business_key = '@key' AND attempts >= 1) THEN
                        RAISE EXCEPTION 'injected claim refusal';
                    END IF;
                    RETURN NEW;
                END $f$;
                CREATE TRIGGER fail_second_claim BEFORE INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION fail_second_claim();
                """;
            await db.Database.ExecuteSqlRawAsync(sql.Replace("@key", key, StringComparison.Ordinal));
        }

        try
        {
            await using var gateway = await FakePaymentGateway.StartAsync();
            gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
            await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
                // One transaction per message: the failed attempt's job row stays, its inbox row does not.
                ("Consumers:ChargePayment:InboxBatchSize", "1"),
                ("Consumers:ChargePayment:RetryLimit", "1"),
                ("Consumers:ChargePayment:RetryMinIntervalMilliseconds", "50")));
            await using var publisher = await TestPublisher.StartAsync(fixture);

            await publisher.PublishAsync(payment);

            // Attempt 1: the gateway's 503 (retried in memory); attempt 2: its claim, before the consumer ran.
            await WaitForStatusAsync(payment, JobStatus.DeadLettered);
            await fixture.AssertDrainedAsync(worker, Queue);
            Assert.Equal(1, gateway.RequestsFor(key));
            await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
            var dead = Assert.Single(await amqp.TakeAllAsync(Queue + "_error"));
            Assert.Contains("injected claim refusal", dead.Header("MT-Fault-Message"), StringComparison.Ordinal);
            // A subscriber is not told the job failed of a 503 that a later attempt got past.
            var faults = await amqp.TakeAllAsync(Subscriber);
            Assert.DoesNotContain(faults, fault => System.Text.Encoding.UTF8.GetString(fault.Body).Contains("answered 503", StringComparison.Ordinal));
        }
        finally
        {
            await using var db = fixture.CreateDbContext();
            await db.Database.ExecuteSqlRawAsync("""
                DROP TRIGGER IF EXISTS fail_second_claim ON inbox;
                DROP FUNCTION IF EXISTS fail_second_claim();
                """);
        }
    }

    /// <summary>
    /// An envelope may name where its sender wants a fault sent (<c>faultAddress</c>, else <c>responseAddress</c>, as
    /// a MassTransit request client sets it), and MassTransit sends the fault there instead of publishing it. Sent
    /// to an address the broker refuses (here an exchange the producer has of another type), the send closed the
    /// endpoint's channel: the message went back to its queue, never to <c>_error</c>, and stopped the endpoint's
    /// consumer on every delivery, for good. The worker answers no requests: the fault is published, as for any
    /// other message, whatever the envelope names.
    /// </summary>
    [Theory]
    [InlineData("faultAddress", "invalid")]
    [InlineData("responseAddress", "invalid")]
    [InlineData("faultAddress", "too large")]
    public async Task A_fault_address_the_sender_names_neither_stalls_the_endpoint_nor_keeps_the_message_from_error(string field, string failure)
    {
        const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
        const string SendersExchange = "conveyor-tests-senders-replies";
        await using (var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-senders-replies"))
        await using (var channel = await connection.CreateChannelAsync())
        {
            await channel.ExchangeDeclareAsync(SendersExchange, ExchangeType.Direct, durable: true);
        }

        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(("Consumers:ChargePayment:MaxMessageBytes", "4096")));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        await fixture.DeclareAsync(Queue + "_error");
        var bad = Guid.NewGuid();
        var good = NewPayment();
        // Refused by its consumer (the fault held and published once), or by the size limit before any consumer ran.
        var command = failure == "invalid"
            ? $$"""{"paymentId":"{{bad}}","accountId":"acct-faults","amountMinor":-5,"currency":"EUR"}"""
            : $$"""{"paymentId":"{{bad}}","accountId":"{{new string('a', 8_000)}}","amountMinor":5,"currency":"EUR"}""";
        var envelope = $$"""{"messageId":"{{Guid.NewGuid()}}","messageType":["urn:message:{{Exchange}}"],"{{field}}":"exchange:{{SendersExchange}}","message":{{command}}}""";

        await producer.PublishRawAsync(Exchange, RawAmqpProducer.Utf8(envelope), RawAmqpProducer.EnvelopeContentType);
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(good);
        }

        var dead = await producer.TakeOnlyAsync(Queue + "_error", async () =>
            $"{Queue}: {await fixture.ReadyAsync(Queue)} ready, {await fixture.ConsumersAsync(Queue)} consumer(s)");
        Assert.StartsWith("permanent failure; not retried: ", dead.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        await WaitForStatusAsync(good, JobStatus.Succeeded);
        // Still consuming: the endpoint's channel was not closed under it.
        Assert.Equal(1u, await fixture.ConsumersAsync(Queue));
        await fixture.AssertDrainedAsync(worker, Queue);
        if (failure == "invalid")
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(1, (await db.Jobs.SingleAsync(j => j.BusinessKey == bad.ToString())).Attempts);
            // Published, as every other fault: a subscriber of Fault<ChargePayment> hears of it.
            Assert.Equal(1u, await fixture.ReadyAsync(Subscriber));
        }
    }

    private static ChargePayment NewPayment() =>
        new() { PaymentId = Guid.NewGuid(), AccountId = "acct-faults", AmountMinor = 2_500, Currency = "EUR" };

    private Task WaitForStatusAsync(ChargePayment payment, string status) =>
        Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(status, (await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString())).Status);
        });
}
