using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Xml.Linq;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.DataProtection.KeyManagement;
using Microsoft.AspNetCore.DataProtection.Repositories;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Conveyor.Tests.Redelivery;

/// <summary>
/// A redelivered copy's seal is checked against the key ring the workers share in the database. Data
/// Protection keeps the ring in memory, but reads it again where it has none (a worker that started
/// during an outage), every day, and for a key it does not know just after starting; a read that fails
/// then must not turn a genuine copy into a first delivery, whose count starts again.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class UnreadableKeyRingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string MessageUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";
    private const string Attempt = "Conveyor-Redelivery-Attempt";
    private const string FirstFailureAt = "Conveyor-First-Failure-At";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_redelivered_copy_whose_seal_cannot_be_checked_waits_for_the_ring_and_keeps_its_count()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();
        var charge = new { paymentId, accountId = "acct-ring", amountMinor = 700, currency = "EUR" };

        // A first worker fails the job and seals its first redelivery.
        Dictionary<string, string> sealedHeaders;
        await using (await fixture.StartWorkerAsync(Settings(gateway)))
        {
            await producer.PublishEnvelopeAsync(Exchange, MessageUrn, charge);
            await fixture.WaitForJobAsync(paymentId, JobStatus.RetryScheduled);
        }

        await using (var db = fixture.CreateDbContext())
        {
            var first = await db.ScheduledMessages.SingleAsync();
            sealedHeaders = JsonSerializer.Deserialize<Dictionary<string, string>>(first.Headers)!;
            // Only what the next worker stores is left to read.
            db.ScheduledMessages.Remove(first);
            await db.SaveChangesAsync();
        }

        Assert.Equal("1", sealedHeaders[Attempt]);

        // Another worker starts while the ring cannot be read, and reads it once more in vain when the
        // copy comes: a short outage, over by the time the worker would seal the next redelivery.
        var ring = new FlakyKeyRing();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway), builder =>
            builder.Services.AddOptions<KeyManagementOptions>().PostConfigure(options => options.XmlRepository = ring.Around(options.XmlRepository!)));
        ring.FailNextReads(1);
        var copied = sealedHeaders.Where(h => h.Key.StartsWith("Conveyor-", StringComparison.Ordinal)).ToDictionary();
        await producer.PublishEnvelopeAsync(Exchange, MessageUrn, charge, headers: copied);

        // Before: the unreadable ring made the genuine copy a first delivery, stored as redelivery 1 again
        // with a new first failure time.
        ScheduledMessageSnapshot? stored = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var row = Assert.Single(await db.ScheduledMessages.AsNoTracking().ToListAsync());
            stored = new(row.Attempt, JsonSerializer.Deserialize<Dictionary<string, string>>(row.Headers)!);
        });
        Assert.Equal(0, ring.ReadsLeftToFail);
        Assert.Equal(2, stored!.Attempt);
        Assert.Equal("2", stored.Headers[Attempt]);
        Assert.Equal(sealedHeaders[FirstFailureAt], stored.Headers[FirstFailureAt]);
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

        public IXmlRepository Around(IXmlRepository database) => new Repository(this, database);

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
