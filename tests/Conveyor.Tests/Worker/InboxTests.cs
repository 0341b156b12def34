using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>The inbox as shipped: messages handled at the same time share a transaction (group commit).</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxTests(ConveyorFixture fixture) : InboxContract(fixture, inboxBatchSize: 64);

/// <summary>The same guarantees with one transaction per message (<c>InboxBatchSize</c> 1).</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class SingleTransactionInboxTests(ConveyorFixture fixture) : InboxContract(fixture, inboxBatchSize: 1);

public abstract class InboxContract(ConveyorFixture fixture, int inboxBatchSize) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;
    private TestPublisher _publisher = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
        var settings = WorkerSettings.With(_gateway);
        settings["Consumers:ChargePayment:InboxBatchSize"] = inboxBatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
        _worker = await fixture.StartWorkerAsync(settings);
        _publisher = await TestPublisher.StartAsync(fixture);
    }

    public async Task DisposeAsync()
    {
        await _publisher.DisposeAsync();
        await _worker.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    [Fact]
    public async Task The_same_message_delivered_twenty_times_at_once_charges_once_and_writes_one_ledger_row()
    {
        // Slow answers make the twenty copies overlap inside the worker.
        _gateway.Latency = TimeSpan.FromMilliseconds(200);
        var payment = NewPayment();
        var messageId = Guid.NewGuid();

        await Task.WhenAll(Enumerable.Range(0, 20).Select(_ => _publisher.PublishAsync(payment, messageId)));

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
        });
        await AssertQueueDrainedAsync();

        // Each copy that ran the consumer again would have asked the gateway again.
        Assert.Equal(1, _gateway.RequestsFor(payment.PaymentId.ToString()));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, await check.Ledger.CountAsync(l => l.PaymentId == payment.PaymentId));
        Assert.Equal(1, await check.Inbox.CountAsync(i => i.MessageKey == payment.PaymentId.ToString()));
    }

    [Fact]
    public async Task The_same_payment_published_twice_with_different_message_ids_has_one_effect()
    {
        var payment = NewPayment();

        await _publisher.PublishAsync(payment, Guid.NewGuid());
        await _publisher.PublishAsync(payment, Guid.NewGuid());

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString())).Status);
        });
        await AssertQueueDrainedAsync();

        Assert.Equal(1, _gateway.RequestsFor(payment.PaymentId.ToString()));
        await using var check = fixture.CreateDbContext();
        var ledger = await check.Ledger.SingleAsync(l => l.PaymentId == payment.PaymentId);
        Assert.Equal(payment.AmountMinor, ledger.AmountMinor);
        Assert.Equal(_gateway.Charges.Single(c => c.IdempotencyKey == payment.PaymentId.ToString()).Id, ledger.GatewayChargeId);
    }

    [Fact]
    public async Task A_payment_from_another_service_gets_a_job_row_that_ends_succeeded()
    {
        var payment = NewPayment();

        await _publisher.PublishAsync(payment);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == payment.PaymentId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
            Assert.Equal("charge-payment", job.Kind);
            Assert.Equal(1, job.Attempts);
            Assert.NotNull(job.FinishedAt);
        });
    }

    [Fact]
    public async Task A_replay_of_a_succeeded_job_whose_inbox_row_was_swept_is_acked_without_running()
    {
        var payment = NewPayment();
        var key = payment.PaymentId.ToString();
        await _publisher.PublishAsync(payment);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Status);
        });
        await using (var db = fixture.CreateDbContext())
        {
            // What the retention sweep does once the inbox window has passed.
            await db.Inbox.Where(i => i.MessageKey == key).ExecuteDeleteAsync();
        }

        await _publisher.PublishAsync(payment, Guid.NewGuid());

        // The replay is handled (its inbox row is back) without running the consumer again.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(1, await db.Inbox.CountAsync(i => i.MessageKey == key));
        });
        await AssertQueueDrainedAsync();
        Assert.Equal(1, _gateway.RequestsFor(key));
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.SingleAsync(j => j.BusinessKey == key);
        Assert.Equal(JobStatus.Succeeded, job.Status);
        Assert.Equal(1, job.Attempts);
        Assert.Equal(1, await check.Ledger.CountAsync(l => l.PaymentId == payment.PaymentId));
    }

    [Fact]
    public async Task Messages_handled_together_commit_their_own_outcomes_a_failure_fails_only_its_own_message()
    {
        const int payments = 40;
        const int failing = 5;
        // Slow answers keep many messages in flight together, so they share transactions.
        _gateway.Latency = TimeSpan.FromMilliseconds(50);
        _gateway.FailNext(failing, System.Net.HttpStatusCode.UnprocessableEntity);
        var sent = Enumerable.Range(0, payments).Select(_ => NewPayment()).ToList();

        await Task.WhenAll(sent.Select(p => _publisher.PublishAsync(p)));

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(payments - failing, await db.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
            Assert.Equal(failing, await db.Jobs.CountAsync(j => j.Status == JobStatus.DeadLettered));
        });
        await AssertQueueDrainedAsync();

        await using var check = fixture.CreateDbContext();
        var succeeded = await check.Jobs.Where(j => j.Status == JobStatus.Succeeded).Select(j => j.BusinessKey).ToListAsync();
        var deadLettered = await check.Jobs.Where(j => j.Status == JobStatus.DeadLettered).ToListAsync();
        // One request each, refused or answered: no message ran twice, and no failure was retried.
        Assert.All(sent, p => Assert.Equal(1, _gateway.RequestsFor(p.PaymentId.ToString())));
        Assert.Equal(succeeded.Order(), (await check.Ledger.Select(l => l.PaymentId.ToString()).ToListAsync()).Order());
        // A failed attempt leaves no inbox row (a copy moved back from _error runs), and counts once.
        Assert.Equal(succeeded.Order(), (await check.Inbox.Select(i => i.MessageKey).ToListAsync()).Order());
        Assert.All(deadLettered, job =>
        {
            Assert.Equal(1, job.Attempts);
            Assert.Contains("422", job.LastError, StringComparison.Ordinal);
        });
        Assert.Equal((uint)failing, await fixture.ReadyAsync("charge-payment_error"));
    }

    [Fact]
    public async Task An_effect_that_violates_a_stored_row_is_a_permanent_failure_dead_lettered_after_one_attempt()
    {
        // The payment's ledger row is there, while its job and inbox rows are not (swept, or written by
        // hand): applying the charge breaks the ledger's key on every try, so trying again is useless.
        var payment = NewPayment();
        var key = payment.PaymentId.ToString();
        await using (var db = fixture.CreateDbContext())
        {
            db.Ledger.Add(new Conveyor.Storage.Payments.LedgerEntry
            {
                PaymentId = payment.PaymentId,
                AccountId = payment.AccountId,
                AmountMinor = payment.AmountMinor,
                Currency = payment.Currency,
                GatewayChargeId = "ch_before",
                ChargedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        await _publisher.PublishAsync(payment);

        // Well within the first redelivery's delay: a transient failure would still be retrying.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.DeadLettered, (await db.Jobs.SingleOrDefaultAsync(j => j.BusinessKey == key))?.Status);
        }, TimeSpan.FromSeconds(30));
        await AssertQueueDrainedAsync();
        await using var check = fixture.CreateDbContext();
        var job = await check.Jobs.SingleAsync(j => j.BusinessKey == key);
        Assert.Equal(1, job.Attempts);
        Assert.Contains("23505", job.LastError, StringComparison.Ordinal);
        Assert.False(await check.ScheduledMessages.AnyAsync(), "a redelivery was scheduled");
        Assert.Equal("ch_before", (await check.Ledger.SingleAsync(l => l.PaymentId == payment.PaymentId)).GatewayChargeId);
    }

    /// <summary>Every copy was handled and the worker has stopped: what the test counts next is final.</summary>
    private Task AssertQueueDrainedAsync() => fixture.AssertDrainedAsync(_worker, "charge-payment");

    private static ChargePayment NewPayment() => new()
    {
        PaymentId = Guid.NewGuid(),
        AccountId = "acct-inbox",
        AmountMinor = 1250,
        Currency = "EUR",
    };
}
