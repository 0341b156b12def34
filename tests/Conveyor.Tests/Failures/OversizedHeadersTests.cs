using Conveyor.Contracts;
using System.Collections.Concurrent;
using System.Text;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using MassTransit;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A producer's headers near the broker's frame limit (131,072 bytes by default) never cost the worker
/// its connection: the copy to <c>_error</c> or <c>_skipped</c> adds MassTransit's and Conveyor's
/// headers, and a copy over the frame makes RabbitMQ close the whole connection, every endpoint's
/// consumer with it, and hand the message out again, forever.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class OversizedHeadersTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    /// <summary>Under the frame on its own; over it with what a move to <c>_error</c> adds.</summary>
    private const int NearTheFrame = 130_700;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Messages_with_headers_near_the_frame_limit_go_to_error_and_skipped_without_the_worker_losing_its_connection()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        var endpoints = new EndpointStarts();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway),
            builder => builder.Services.AddReceiveEndpointObserver(_ => endpoints));
        await fixture.DeclareAsync("charge-payment_error");
        await fixture.DeclareAsync("charge-payment_skipped");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var padded = new Dictionary<string, string> { ["X-Pad"] = new string('p', NearTheFrame) };
        var invalid = Guid.NewGuid();
        var good = Guid.NewGuid();

        // Invalid (no currency in circulation), an unknown message type, then a good one.
        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = invalid, accountId = "acct-padded", amountMinor = 1250, currency = "XXX" }, headers: padded);
        await producer.PublishEnvelopeAsync(ChargeExchange, "urn:message:Acme.Shipping:ShipOrder", new { orderId = 12 }, headers: padded);
        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = good, accountId = "acct-good", amountMinor = 250, currency = "EUR" });

        var error = new List<RawAmqpProducer.TakenMessage>();
        var skipped = new List<RawAmqpProducer.TakenMessage>();
        await Eventually.AssertAsync(async () =>
        {
            error.AddRange(await producer.TakeAllAsync("charge-payment_error"));
            skipped.AddRange(await producer.TakeAllAsync("charge-payment_skipped"));
            Assert.Single(error);
            Assert.Single(skipped);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));

        // Each copy kept its body and says which header was dropped to fit.
        foreach (var copy in error.Concat(skipped))
        {
            Assert.Null(copy.Header("X-Pad"));
            Assert.StartsWith("X-Pad (", copy.Header("Conveyor-Dropped-Headers"), StringComparison.Ordinal);
        }

        Assert.Contains(invalid.ToString(), Encoding.UTF8.GetString(error[0].Body), StringComparison.Ordinal);
        Assert.Contains("headers take", error[0].Header("MT-Fault-Message"), StringComparison.Ordinal);
        Assert.False(string.IsNullOrWhiteSpace(error[0].Header("Conveyor-Dead-Letter-Reason")));
        Assert.Contains("ShipOrder", Encoding.UTF8.GetString(skipped[0].Body), StringComparison.Ordinal);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(1, await db.Ledger.CountAsync(l => l.PaymentId == good));
        });
        await using (var db = fixture.CreateDbContext())
        {
            // Refused before any attempt, once: it never went round again.
            Assert.Equal(0, await db.Jobs.CountAsync(j => j.BusinessKey == invalid.ToString() && j.Attempts > 0));
        }

        // Every endpoint started once and never failed: the connection was never lost.
        Assert.Equal(1, endpoints.Ready("charge-payment"));
        Assert.Equal(1, endpoints.Ready("deliver-webhook"));
        Assert.Equal(0, endpoints.Faults);
        Assert.Equal(1u, await fixture.ConsumersAsync("charge-payment"));
        using (var ready = await worker.Client.GetAsync(new Uri("/health/ready", UriKind.Relative)))
        {
            Assert.True(ready.IsSuccessStatusCode);
        }

        await fixture.AssertDrainedAsync(worker, "charge-payment");
        Assert.Empty(await producer.TakeAllAsync("charge-payment_error"));
    }

    [Fact]
    public async Task A_valid_message_whose_headers_are_over_the_limit_goes_to_error_before_any_work()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var payment = Guid.NewGuid();

        // Over the default limit (64 KiB), well under the frame: it could be handled, but a redelivery
        // or a move to _error could no longer add what it must.
        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = payment, accountId = "acct-padded", amountMinor = 1250, currency = "EUR" },
            headers: new Dictionary<string, string> { ["X-Pad"] = new string('p', 70_000) });

        var error = await producer.TakeOnlyAsync("charge-payment_error", () => PipelineState.DescribeAsync(fixture));

        Assert.Contains("headers take", error.Header("MT-Fault-Message"), StringComparison.Ordinal);
        Assert.Contains("the limit is 65536", error.Header("MT-Fault-Message"), StringComparison.Ordinal);
        // It fits as it is: nothing dropped.
        Assert.Equal(70_000, error.Header("X-Pad")?.Length);
        Assert.Null(error.Header("Conveyor-Dropped-Headers"));
        Assert.Empty(gateway.Charges);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Ledger.CountAsync());
        Assert.Equal(0, await db.Jobs.CountAsync(j => j.BusinessKey == payment.ToString() && j.Attempts > 0));
    }

    [Fact]
    public async Task A_command_refused_before_its_job_has_a_row_does_not_name_the_job_its_header_claims_in_error()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var other = await PublishedJobAsync();
        var payment = Guid.NewGuid();

        // Published straight to RabbitMQ (no row made for it), claiming another job's id, and refused for
        // its headers before any row could be made: no job of its own to name.
        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = payment, accountId = "acct-claims", amountMinor = 1250, currency = "EUR" },
            headers: new Dictionary<string, string>
            {
                ["X-Pad"] = new string('p', 70_000),
                [JobHeaders.JobId] = other.ToString(),
                ["Conveyor-Attempts"] = "7",
            });

        var error = await producer.TakeOnlyAsync("charge-payment_error", () => PipelineState.DescribeAsync(fixture));

        Assert.Contains("headers take", error.Header("MT-Fault-Message"), StringComparison.Ordinal);
        // An operator's move by the other job's id must not take this command along, nor the Api's listing
        // show that job's status beside it.
        Assert.Null(error.Header(JobHeaders.JobId));
        // Nor a count of attempts it never had: nothing ran.
        Assert.Null(error.Header("Conveyor-Attempts"));
        await using var db = fixture.CreateDbContext();
        Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == payment.ToString()));
    }

    /// <summary>The id of a job the worker ran: a charge published and succeeded.</summary>
    private async Task<Guid> PublishedJobAsync()
    {
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new Conveyor.Contracts.Payments.ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-other", AmountMinor = 500, Currency = "EUR" };
        await publisher.PublishAsync(payment);
        return (await fixture.WaitForJobAsync(payment.PaymentId, Conveyor.Storage.Jobs.JobStatus.Succeeded)).Id;
    }

    /// <summary>How often each receive endpoint became ready (once per consumer start) and how often one faulted.</summary>
    private sealed class EndpointStarts : IReceiveEndpointObserver
    {
        private readonly ConcurrentDictionary<string, int> _ready = new(StringComparer.Ordinal);
        private int _faults;

        public int Faults => Volatile.Read(ref _faults);

        public int Ready(string queue) => _ready.GetValueOrDefault(queue);

        Task IReceiveEndpointObserver.Ready(ReceiveEndpointReady ready)
        {
            _ready.AddOrUpdate(ready.InputAddress.AbsolutePath.Split('/')[^1], 1, (_, count) => count + 1);
            return Task.CompletedTask;
        }

        Task IReceiveEndpointObserver.Stopping(ReceiveEndpointStopping stopping) => Task.CompletedTask;

        Task IReceiveEndpointObserver.Completed(ReceiveEndpointCompleted completed) => Task.CompletedTask;

        Task IReceiveEndpointObserver.Faulted(ReceiveEndpointFaulted faulted)
        {
            Interlocked.Increment(ref _faults);
            return Task.CompletedTask;
        }
    }
}
