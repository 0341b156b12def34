using System.Net;
using System.Text.Json;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using RabbitMQ.Client;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>The real path: charges fail and are dead-lettered by the worker, the gateway heals, an operator moves them back.</summary>
[Collection(SecondLaneCollection.Name)]
public sealed class MoveBackEndToEndTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int Charges = 40;

    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
        _gateway = await FakePaymentGateway.StartAsync();
        _worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        _api = await fixture.StartApiAsync(ErrorQueueKit.ApiSettings());
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        await _worker.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    [Fact]
    public async Task Moving_everything_back_after_the_gateway_heals_charges_each_payment_exactly_once()
    {
        // A 400 is permanent: each charge is dead-lettered after one attempt.
        _gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        var payments = Enumerable.Range(0, Charges).Select(_ => Guid.NewGuid()).ToList();
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            foreach (var payment in payments)
            {
                await publisher.PublishAsync(new ChargePayment { PaymentId = payment, AccountId = "acct-heal", AmountMinor = 700, Currency = "EUR" });
            }
        }

        await using var broker = await TestBroker.ConnectAsync(fixture);
        await Eventually.AssertAsync(async () => Assert.Equal((uint)Charges, await broker.CountAsync(ErrorQueueKit.ChargeErrors)));
        // Each payment asked for once, and refused.
        Assert.All(payments, payment => Assert.Equal(1, _gateway.RequestsFor(payment.ToString())));

        _gateway.FailEverythingWith = null;
        using var admin = ErrorQueueKit.Client(_api.BaseAddress);
        var operation = await admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });

        Assert.Equal(("succeeded", Charges), (operation.GetProperty("state").GetString(), operation.GetProperty("moved").GetInt64()));
        Assert.Equal(0u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(Charges, await db.Ledger.CountAsync());
        });
        await fixture.AssertDrainedAsync(_worker, ErrorQueueKit.ChargeQueue);
        // The refused request and one more that charged: the copy moved back ran once.
        Assert.All(payments, payment => Assert.Equal((2, 1), (_gateway.RequestsFor(payment.ToString()), _gateway.SuccessfulRequestsFor(payment.ToString()))));
        Assert.Equal(Charges, _gateway.Charges.Count);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(payments.ToHashSet(), (await db.Ledger.Select(l => l.PaymentId).ToListAsync()).ToHashSet());
        }

        Assert.Equal(0u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task A_dead_lettered_job_moved_back_is_no_longer_finished_while_it_waits_for_another_attempt()
    {
        // Dead-lettered (a permanent 400): a final status, with its finish time.
        _gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        var payment = Guid.NewGuid();
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(new ChargePayment { PaymentId = payment, AccountId = "acct-again", AmountMinor = 700, Currency = "EUR" });
        }

        await Eventually.AssertAsync(async () =>
        {
            var dead = await JobAsync(payment);
            Assert.Equal(JobStatus.DeadLettered, dead?.Status);
            Assert.NotNull(dead!.FinishedAt);
        });

        // Moved back while the gateway is down (503, transient): the job waits for a delayed redelivery.
        _gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        using var admin = ErrorQueueKit.Client(_api.BaseAddress);
        await admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });

        await Eventually.AssertAsync(async () =>
        {
            var waiting = await JobAsync(payment);
            Assert.Equal(JobStatus.RetryScheduled, waiting?.Status);
            Assert.Null(waiting!.FinishedAt);
            Assert.NotNull(waiting.NextAttemptAt);
        });
    }

    [Fact]
    public async Task A_command_published_straight_to_the_broker_and_moved_back_passes_the_field_checks_again()
    {
        // As README's raw producers publish it, in PascalCase: one casing per field is fine.
        _gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        var payment = Guid.NewGuid();
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        await producer.PublishEnvelopeAsync(
            "Conveyor.Contracts.Payments:ChargePayment", "urn:message:Conveyor.Contracts.Payments:ChargePayment",
            new Dictionary<string, object> { ["PaymentId"] = payment, ["AccountId"] = "acct-raw", ["AmountMinor"] = 700, ["Currency"] = "EUR" });
        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.DeadLettered, (await JobAsync(payment))?.Status));

        await MoveTheChargeBackAndSeeItChargedOnceAsync(payment);
    }

    /// <summary>
    /// A command its producer published with RabbitMQ's sender-selected distribution headers: <c>CC</c> names
    /// another queue (the broker keeps it on the delivered message, and MassTransit on its <c>_error</c> copy),
    /// <c>BCC</c> too. Published to the contract's fanout exchange, neither routed it anywhere else; moved back
    /// through the default exchange, a copy that kept them reached the named queue as well: another consumer's
    /// duplicate. A header that merely starts with "CC" is the sender's own and travels on.
    /// </summary>
    [Fact]
    public async Task A_command_sent_with_cc_headers_moved_back_reaches_its_own_queue_only()
    {
        _gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        var payment = Guid.NewGuid();
        var witness = $"cc-witness-{Guid.NewGuid():N}";
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync($"conveyor-tests-cc ({CallingTest.Name()})");
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        await channel.QueueDeclareAsync(witness, durable: false, exclusive: false, autoDelete: false);
        try
        {
            var id = Guid.NewGuid();
            var envelope = new
            {
                messageId = id,
                messageType = new[] { "urn:message:Conveyor.Contracts.Payments:ChargePayment" },
                message = new { paymentId = payment, accountId = "acct-cc", amountMinor = 700, currency = "EUR" },
            };
            var properties = new BasicProperties
            {
                ContentType = RawAmqpProducer.EnvelopeContentType,
                MessageId = id.ToString(),
                DeliveryMode = DeliveryModes.Persistent,
                Headers = new Dictionary<string, object?>
                {
                    ["CC"] = new List<object> { witness },
                    ["BCC"] = new List<object> { witness },
                    ["CC-Note"] = "kept",
                },
            };
            await channel.BasicPublishAsync("Conveyor.Contracts.Payments:ChargePayment", "", mandatory: false, properties,
                JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web));
            await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.DeadLettered, (await JobAsync(payment))?.Status));
            await using (var broker = await TestBroker.ConnectAsync(fixture))
            {
                var dead = Assert.Single(await broker.ReadAllAsync(ErrorQueueKit.ChargeErrors));
                Assert.True(dead.Headers.ContainsKey("CC"), "MassTransit's _error copy keeps the CC header");
            }

            await MoveTheChargeBackAndSeeItChargedOnceAsync(payment);
            // The move's one publish routed to every queue it would reach before the job could run.
            Assert.Equal(0u, await channel.MessageCountAsync(witness));
        }
        finally
        {
            await channel.QueueDeleteAsync(witness);
        }
    }

    private async Task<Job?> JobAsync(Guid payment)
    {
        await using var db = fixture.CreateDbContext();
        return await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.BusinessKey == payment.ToString());
    }

    /// <summary>
    /// Heals the gateway, moves the charges' error queue back, and checks that the move took one message and the
    /// payment's job succeeded with one charge.
    /// </summary>
    private async Task MoveTheChargeBackAndSeeItChargedOnceAsync(Guid payment)
    {
        _gateway.FailEverythingWith = null;
        using var admin = ErrorQueueKit.Client(_api.BaseAddress);
        var operation = await admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });

        Assert.Equal(1, operation.GetProperty("moved").GetInt64());
        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, (await JobAsync(payment))?.Status));
        Assert.Equal(1, _gateway.SuccessfulRequestsFor(payment.ToString()));
    }
}
