using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Xml.Linq;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.AspNetCore.DataProtection.Repositories;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Conveyor.Tests.Redelivery;

/// <summary>
/// A redelivered copy's seal is checked against the key ring the workers share in the database. Data
/// Protection keeps the ring in memory, but reads it again where it has none (a worker that started
/// during an outage), every day, and for a key it does not know just after starting; a read that fails
/// then must not turn a genuine copy into a first delivery, whose count starts again. Sealing a failed
/// delivery's redelivery reads it too, and a failure there must not send the delivery round its queue
/// at once, to the gateway again.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class UnreadableKeyRingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string MessageUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";
    private const string Attempt = "Conveyor-Redelivery-Attempt";
    private const string FirstFailureAt = "Conveyor-First-Failure-At";

    /// <summary>The worker's warning for a copy given back because its seal could not be checked.</summary>
    private const int SealUncheckedEventId = 3101;

    /// <summary>The worker's warning for a failed delivery given back because its redelivery could not be sealed.</summary>
    private const int UnsealedEventId = 3102;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_redelivered_copy_whose_seal_cannot_be_checked_waits_for_the_ring_and_keeps_its_count()
    {
        await using var first = await SealFirstRedeliveryAsync();
        var (gateway, sealedHeaders) = (first.Gateway, first.SealedHeaders);

        // Another worker starts while the ring cannot be read, and reads it once more in vain when the
        // copy comes: a short outage, over by the time the worker would seal the next redelivery.
        var ring = new FlakyKeyRing();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway), ring.Configure);
        ring.FailNextReads(1);
        await first.SendCopyAsync();

        // Before: the unreadable ring made the genuine copy a first delivery, stored as redelivery 1 again
        // with a new first failure time.
        var stored = await StoredRedeliveryAsync();
        Assert.Equal(0, ring.ReadsLeftToFail);
        Assert.Equal(2, stored.Attempt);
        Assert.Equal("2", stored.Headers[Attempt]);
        Assert.Equal(sealedHeaders[FirstFailureAt], stored.Headers[FirstFailureAt]);
    }

    [Fact]
    public async Task A_key_ring_readable_again_within_seconds_checks_the_seal_on_the_copys_one_delivery()
    {
        await using var first = await SealFirstRedeliveryAsync();
        var (gateway, sealedHeaders) = (first.Gateway, first.SealedHeaders);

        // The ring fails three reads in a row when the copy comes: a blip of the database, over in seconds.
        var ring = new FlakyKeyRing();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway), ring.Configure);
        ring.FailNextReads(3);
        var requestsBefore = gateway.TotalRequests;
        await first.SendCopyAsync();

        var stored = await StoredRedeliveryAsync();
        Assert.Equal(0, ring.ReadsLeftToFail);
        Assert.Equal(2, stored.Attempt);
        Assert.Equal(sealedHeaders[FirstFailureAt], stored.Headers[FirstFailureAt]);
        // Delivered once, so charged once (RetryLimit 0). Before: given back to its queue at each failed
        // read and delivered again at once, the gateway asked once per read, four times.
        Assert.Equal(1, gateway.TotalRequests - requestsBefore);
    }

    [Fact]
    public async Task A_copy_whose_key_ring_stays_unreadable_goes_back_to_its_queue_with_one_warning_each_time_until_the_ring_answers()
    {
        await using var first = await SealFirstRedeliveryAsync();
        var (gateway, sealedHeaders) = (first.Gateway, first.SealedHeaders);

        // An outage longer than the worker waits for the ring on one delivery.
        var logs = new CapturedLogs();
        var ring = new FlakyKeyRing();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway), builder =>
        {
            ring.Configure(builder);
            builder.Logging.AddProvider(logs);
        });
        var requestsBefore = gateway.TotalRequests;
        await first.SendCopyAsync();

        // Given back and delivered again, not lost; and not taken for a first delivery meanwhile.
        await Eventually.AssertAsync(() => Assert.True(gateway.TotalRequests - requestsBefore >= 2));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Empty(await db.ScheduledMessages.AsNoTracking().ToListAsync());
        }

        ring.FailNextReads(0);
        var stored = await StoredRedeliveryAsync();
        Assert.Equal(2, stored.Attempt);
        Assert.Equal(sealedHeaders[FirstFailureAt], stored.Headers[FirstFailureAt]);
        // Every delivery but the last went back to its queue, each with one warning, not one per read.
        var deliveries = gateway.TotalRequests - requestsBefore;
        var warnings = logs.Entries.Where(e => e.EventId.Id == SealUncheckedEventId).ToList();
        Assert.Equal(deliveries - 1, warnings.Count);
        Assert.All(warnings, w => Assert.Equal(LogLevel.Warning, w.Level));
    }

    [Fact]
    public async Task A_garbled_seal_still_counts_as_a_first_delivery_not_as_one_to_check_again()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();

        // The ring is readable: the seal fails to open for what it is, so the copy is not requeued for ever.
        await producer.PublishEnvelopeAsync(Exchange, MessageUrn, new { paymentId, accountId = "acct-ring", amountMinor = 700, currency = "EUR" },
            headers: new Dictionary<string, string> { [Attempt] = "2", [FirstFailureAt] = "2001-01-01T00:00:00.0000000+00:00", ["Conveyor-Redelivery-Seal"] = "CfDJ8garbled" });

        await fixture.WaitForJobAsync(paymentId, JobStatus.RetryScheduled);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, (await db.ScheduledMessages.AsNoTracking().SingleAsync()).Attempt);
    }

    [Fact]
    public async Task A_first_failure_whose_redelivery_cannot_be_sealed_for_a_few_reads_is_stored_after_one_gateway_request()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        // A worker started while the ring could not be read has none in memory: sealing the first failure's
        // redelivery reads it, and the database is back after three reads.
        var ring = new FlakyKeyRing();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway), ring.Configure);
        ring.FailNextReads(3);
        var paymentId = Guid.NewGuid();
        await producer.PublishEnvelopeAsync(Exchange, MessageUrn, Charge(paymentId));

        var stored = await StoredRedeliveryAsync();
        Assert.Equal(0, ring.ReadsLeftToFail);
        Assert.Equal(1, stored.Attempt);
        Assert.Equal("1", stored.Headers[Attempt]);
        // Delivered once, so charged once (RetryLimit 0). Before: given back to its queue at each failed
        // seal and delivered again at once, the gateway asked once per read, four times.
        Assert.Equal(1, gateway.TotalRequests);
    }

    [Fact]
    public async Task A_failure_whose_redelivery_stays_unsealable_goes_back_to_its_queue_with_one_warning_each_time_until_the_ring_answers()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        // An outage longer than the worker waits for the ring on one delivery.
        var logs = new CapturedLogs();
        var ring = new FlakyKeyRing();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway), builder =>
        {
            ring.Configure(builder);
            builder.Logging.AddProvider(logs);
        });
        var paymentId = Guid.NewGuid();
        await producer.PublishEnvelopeAsync(Exchange, MessageUrn, Charge(paymentId));

        // Given back and delivered again, not lost, nor stored unsealed.
        await Eventually.AssertAsync(() => Assert.True(gateway.TotalRequests >= 2));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Empty(await db.ScheduledMessages.AsNoTracking().ToListAsync());
        }

        ring.FailNextReads(0);
        var stored = await StoredRedeliveryAsync();
        Assert.Equal(1, stored.Attempt);
        Assert.Equal("1", stored.Headers[Attempt]);
        // Every delivery but the last went back to its queue, each with one warning, not one per read.
        var deliveries = gateway.TotalRequests;
        var warnings = logs.Entries.Where(e => e.EventId.Id == UnsealedEventId).ToList();
        Assert.Equal(deliveries - 1, warnings.Count);
        Assert.All(warnings, w => Assert.Equal(LogLevel.Warning, w.Level));
    }

    private static object Charge(Guid paymentId) => new { paymentId, accountId = "acct-ring", amountMinor = 700, currency = "EUR" };

    /// <summary>
    /// A first worker fails a charge against a gateway that refuses everything and seals its first
    /// redelivery; the stored row is removed, so that only what the next worker stores is left to read.
    /// </summary>
    private async Task<FirstRedelivery> SealFirstRedeliveryAsync()
    {
        var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();
        var first = new FirstRedelivery(gateway, producer, Charge(paymentId), []);
        try
        {
            await using (await fixture.StartWorkerAsync(Settings(gateway)))
            {
                await producer.PublishEnvelopeAsync(Exchange, MessageUrn, first.Charge);
                await fixture.WaitForJobAsync(paymentId, JobStatus.RetryScheduled);
            }

            await using var context = fixture.CreateDbContext();
            var row = await context.ScheduledMessages.SingleAsync();
            var headers = JsonSerializer.Deserialize<Dictionary<string, string>>(row.Headers)!;
            context.ScheduledMessages.Remove(row);
            await context.SaveChangesAsync();
            Assert.Equal("1", headers[Attempt]);
            return first with { SealedHeaders = headers };
        }
        catch
        {
            await first.DisposeAsync();
            throw;
        }
    }

    /// <summary>A charge whose first redelivery was sealed, with the gateway and producer it went through.</summary>
    private sealed record FirstRedelivery(FakePaymentGateway Gateway, RawAmqpProducer Producer, object Charge, Dictionary<string, string> SealedHeaders) : IAsyncDisposable
    {
        /// <summary>Sends the charge again with the redelivery headers a copy carries, as the dispatcher publishes them.</summary>
        public Task SendCopyAsync() => Producer.PublishEnvelopeAsync(Exchange, MessageUrn, Charge,
            headers: SealedHeaders.Where(h => h.Key.StartsWith("Conveyor-", StringComparison.Ordinal)).ToDictionary());

        public async ValueTask DisposeAsync()
        {
            await Producer.DisposeAsync();
            await Gateway.DisposeAsync();
        }
    }

    /// <summary>The one redelivery stored, once there is one.</summary>
    private async Task<ScheduledMessageSnapshot> StoredRedeliveryAsync()
    {
        ScheduledMessageSnapshot? stored = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var row = Assert.Single(await db.ScheduledMessages.AsNoTracking().ToListAsync());
            stored = new(row.Attempt, JsonSerializer.Deserialize<Dictionary<string, string>>(row.Headers)!);
        });
        return stored!;
    }

    private static Dictionary<string, string?> Settings(FakePaymentGateway gateway) => WorkerSettings.With(gateway).Override(
        ("Consumers:ChargePayment:RetryLimit", "0"),
        ("Consumers:ChargePayment:RedeliveryLimit", "3"),
        // Long enough that no stored redelivery is dispatched during the test.
        ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000"),
        ("Consumers:ChargePayment:KillSwitchTripPercent", "0"));

    private sealed record ScheduledMessageSnapshot(int Attempt, Dictionary<string, string> Headers);

    /// <summary>
    /// The worker's key ring in the database, unreadable (as in an outage) until told otherwise, and then
    /// for as many more reads as told.
    /// </summary>
    private sealed class FlakyKeyRing
    {
        private int _readsLeftToFail = int.MaxValue;

        public int ReadsLeftToFail => Volatile.Read(ref _readsLeftToFail);

        public void FailNextReads(int count) => Volatile.Write(ref _readsLeftToFail, count);

        /// <summary>Puts this ring around the worker's own, in the database.</summary>
        public void Configure(WebApplicationBuilder builder) =>
            builder.Services.AddOptions<KeyManagementOptions>().PostConfigure(options => options.XmlRepository = new Repository(this, options.XmlRepository!));

        private sealed class Repository(FlakyKeyRing ring, IXmlRepository database) : IXmlRepository
        {
            public IReadOnlyCollection<XElement> GetAllElements()
            {
                int left;
                do
                {
                    left = ring.ReadsLeftToFail;
                    if (left == 0)
                    {
                        return database.GetAllElements();
                    }
                }
                while (Interlocked.CompareExchange(ref ring._readsLeftToFail, left - 1, left) != left);

                throw new NpgsqlException("Failed to connect to the database", new SocketException((int)SocketError.ConnectionRefused));
            }

            public void StoreElement(XElement element, string friendlyName) => database.StoreElement(element, friendlyName);
        }
    }
}
