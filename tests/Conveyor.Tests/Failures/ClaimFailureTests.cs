using System.Globalization;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>A transient failure before the consumer runs (the inbox's claim) is redelivered like any other.</summary>
[Collection(ConveyorCollection.Name)]
public sealed class ClaimFailureTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "charge-payment";

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await fixture.DeclareAsync(Queue + "_skipped");
        await fixture.DeclareAsync(Queue + "_error");
    }

    public async Task DisposeAsync()
    {
        await using var db = fixture.CreateDbContext();
        await db.Database.ExecuteSqlRawAsync("""
            DROP TRIGGER IF EXISTS fail_first_claim ON inbox;
            DROP FUNCTION IF EXISTS fail_first_claim();
            DROP SEQUENCE IF EXISTS claim_failures;
            """);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_claim_that_fails_transiently_is_redelivered_and_leaves_no_skipped_copy(int inboxBatchSize)
    {
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-claim", AmountMinor = 900, Currency = "EUR" };
        var key = payment.PaymentId.ToString();
        await using (var db = fixture.CreateDbContext())
        {
            // The first insert of this message's inbox row fails as a serialization failure does (transient).
            var sql = """
                CREATE SEQUENCE claim_failures;
                CREATE FUNCTION fail_first_claim() RETURNS trigger LANGUAGE plpgsql AS $f$
                BEGIN
                    IF NEW.message_key = '@key' AND nextval('claim_failures') = 1 THEN
                        RAISE EXCEPTION 'injected claim failure' USING ERRCODE = '40001';
                    END IF;
                    RETURN NEW;
                END $f$;
                CREATE TRIGGER fail_first_claim BEFORE INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION fail_first_claim();
                """;
            await db.Database.ExecuteSqlRawAsync(sql.Replace("@key", key, StringComparison.Ordinal));
        }

        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:InboxBatchSize", inboxBatchSize.ToString(CultureInfo.InvariantCulture)),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "2"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "200")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(payment);

        var job = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(1, gateway.RequestsFor(key));
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_skipped"));
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_error"));
        // The injected failure did happen (the first claim failed, a later one went through), and the
        // claim that failed counted nothing: the job ran once, its inbox row is done.
        await using var check = fixture.CreateDbContext();
        var claims = await check.Database.SqlQuery<long>($"SELECT last_value AS \"Value\" FROM claim_failures").SingleAsync();
        Assert.True(claims >= 2, $"the claim was tried {claims} time(s)");
        Assert.Equal(1, job.Attempts);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.AsNoTracking().SingleAsync(i => i.MessageKey == key)).Status);
    }
}
