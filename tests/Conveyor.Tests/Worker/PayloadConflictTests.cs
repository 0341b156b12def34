using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// ADR 0011: a message whose key the inbox applied already from a command with other content is a
/// conflict, not a duplicate. It goes to <c>_error</c> with the reason and changes nothing; a true
/// copy is still acked unapplied.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class PayloadConflictTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "charge-payment";
    private const string ConflictType = "Conveyor.Worker.Failures.IdempotencyConflictException";
    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_second_command_under_an_applied_key_with_other_content_goes_to_the_error_queue_and_changes_nothing(int inboxBatchSize)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        using var duplicates = WorkerMetric.Duplicates(Queue);
        using var conflicts = WorkerMetric.Conflicts(Queue);
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize));
        duplicates.Watch(worker.Services);
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-conflict", AmountMinor = 1_250, Currency = "EUR" };
        var key = payment.PaymentId.ToString();

        await publisher.PublishAsync(payment, Guid.NewGuid());
        var job = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await publisher.PublishAsync(payment with { AmountMinor = 9_999 }, Guid.NewGuid());

        var dead = await SingleDeadLetteredAsync(Queue + "_error");
        Assert.Equal(ConflictType, dead.Header("MT-Fault-ExceptionType"));
        Assert.Contains($"Key '{key}' of {Queue} was applied already from a command with other content", dead.Header("MT-Fault-Message"), StringComparison.Ordinal);
        Assert.StartsWith("idempotency conflict; not applied: ", dead.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        Assert.Equal(job.Id.ToString(), dead.Header("Conveyor-Job-Id"));
        using (var body = JsonDocument.Parse(dead.Body))
        {
            Assert.Equal(9_999, body.RootElement.GetProperty("message").GetProperty("amountMinor").GetInt64());
        }

        Assert.Equal(1, conflicts.Count);
        Assert.Equal(0, duplicates.Count);

        // A true copy of the applied command is still a duplicate.
        await publisher.PublishAsync(payment, Guid.NewGuid());
        await Eventually.AssertAsync(() => Assert.Equal(1, duplicates.Count));
        await fixture.AssertDrainedAsync(worker, Queue);

        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_error"));
        Assert.Equal(1, conflicts.Count);
        Assert.Equal(1, gateway.RequestsFor(key));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1_250, (await db.Ledger.SingleAsync(l => l.PaymentId == payment.PaymentId)).AmountMinor);
        var after = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((JobStatus.Succeeded, 1, null), (after.Status, after.Attempts, after.LastError));
    }

    [Fact]
    public async Task Of_two_commands_under_one_key_published_together_exactly_one_is_applied_and_the_other_is_dead_lettered()
    {
        const int Payments = 24;
        await using var gateway = await FakePaymentGateway.StartAsync();
        using var conflicts = WorkerMetric.Conflicts(Queue);
        // Both of a pair are prefetched at once and mostly land in one inbox batch; some do not.
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize: 16));
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payments = Enumerable.Range(1, Payments)
            .Select(i => new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-pair", AmountMinor = i * 100, Currency = "EUR" })
            .ToList();

        await Task.WhenAll(payments.SelectMany(p => new[]
        {
            publisher.PublishAsync(p, Guid.NewGuid()),
            publisher.PublishAsync(p with { AmountMinor = p.AmountMinor + 1 }, Guid.NewGuid()),
        }));

        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        var dead = new List<RawAmqpProducer.TakenMessage>();
        await Eventually.AssertAsync(async () =>
        {
            dead.AddRange(await amqp.TakeAllAsync(Queue + "_error"));
            Assert.Equal(Payments, dead.Count);
        }, timeout: TimeSpan.FromSeconds(60));
        await fixture.AssertDrainedAsync(worker, Queue);

        Assert.All(dead, d => Assert.Equal(ConflictType, d.Header("MT-Fault-ExceptionType")));
        Assert.Equal(Payments, conflicts.Count);
        var deadAmounts = dead.ToDictionary(
            d => JsonDocument.Parse(d.Body).RootElement.GetProperty("message").GetProperty("paymentId").GetGuid(),
            d => JsonDocument.Parse(d.Body).RootElement.GetProperty("message").GetProperty("amountMinor").GetInt64());
        await using var db = fixture.CreateDbContext();
        var ledger = await db.Ledger.Where(l => l.AccountId == "acct-pair").ToDictionaryAsync(l => l.PaymentId, l => l.AmountMinor);
        Assert.Equal(Payments, ledger.Count);
        foreach (var payment in payments)
        {
            // One of the two amounts was charged, the other one is in _error.
            var charged = ledger[payment.PaymentId];
            Assert.Contains(charged, new[] { payment.AmountMinor, payment.AmountMinor + 1 });
            Assert.Equal(charged == payment.AmountMinor ? payment.AmountMinor + 1 : payment.AmountMinor, deadAmounts[payment.PaymentId]);
            Assert.Equal(1, gateway.SuccessfulRequestsFor(payment.PaymentId.ToString()));
            Assert.Equal(charged, gateway.Charges.Single(c => c.IdempotencyKey == payment.PaymentId.ToString()).AmountMinor);
        }

        Assert.Equal(Payments, await db.Jobs.CountAsync(j => j.Kind == "charge-payment" && j.Status == JobStatus.Succeeded));
    }

    [Fact]
    public async Task A_long_job_under_a_finished_key_with_other_content_is_dead_lettered_and_the_report_stands()
    {
        const string ReportQueue = "generate-report";
        await using (var seed = fixture.CreateDbContext())
        {
            seed.Ledger.Add(new LedgerEntry
            {
                PaymentId = Guid.NewGuid(), AccountId = "acct-report-conflict", AmountMinor = 700, Currency = "EUR",
                GatewayChargeId = "ch_conflict", ChargedAt = DateTimeOffset.UtcNow,
            });
            await seed.SaveChangesAsync();
        }

        using var conflicts = WorkerMetric.Conflicts(ReportQueue);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-report-conflict", Currency = "EUR" };
        var key = report.ReportId.ToString();

        await publisher.PublishAsync(report, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await publisher.PublishAsync(report with { Currency = "USD" }, Guid.NewGuid());

        var dead = await SingleDeadLetteredAsync(ReportQueue + "_error");
        Assert.Equal(ConflictType, dead.Header("MT-Fault-ExceptionType"));
        await fixture.AssertDrainedAsync(worker, ReportQueue);
        Assert.Equal(1, conflicts.Count);
        await using var db = fixture.CreateDbContext();
        var stored = await db.Reports.SingleAsync(r => r.ReportId == report.ReportId);
        Assert.Equal(("EUR", 1L), (stored.Currency, stored.RowsScanned));
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        Assert.Equal((JobStatus.Succeeded, 1), (job.Status, job.Attempts));
    }

    [Fact]
    public async Task An_inbox_row_written_before_fingerprints_were_kept_treats_any_later_command_as_a_duplicate()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        using var duplicates = WorkerMetric.Duplicates(Queue);
        using var conflicts = WorkerMetric.Conflicts(Queue);
        // Declared up front, as MassTransit would declare it for its first failed message, so it can be counted.
        await fixture.DeclareAsync(Queue + "_error");
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize: 16));
        duplicates.Watch(worker.Services);
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-old-row", AmountMinor = 300, Currency = "EUR" };
        var key = payment.PaymentId.ToString();
        await publisher.PublishAsync(payment, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync(
                $"UPDATE inbox SET payload_hash = NULL WHERE consumer_id = {Queue} AND message_key = {key} AND payload_hash IS NOT NULL"));
        }

        await publisher.PublishAsync(payment with { AmountMinor = 301 }, Guid.NewGuid());

        await Eventually.AssertAsync(() => Assert.Equal(1, duplicates.Count));
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(0, conflicts.Count);
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_error"));
        Assert.Equal(1, gateway.RequestsFor(key));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_webhook_published_again_with_its_payload_members_in_another_order_is_a_duplicate(int inboxBatchSize)
    {
        const string WebhookQueue = "deliver-webhook";
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        using var duplicates = WorkerMetric.Duplicates(WebhookQueue);
        using var conflicts = WorkerMetric.Conflicts(WebhookQueue);
        await using var worker = await fixture.StartWorkerAsync(WebhookSettings(inboxBatchSize));
        duplicates.Watch(worker.Services);
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver, """{"orderId":42,"amount":12.5,"customer":{"tier":"gold","id":7}}""");
        var key = webhook.WebhookId.ToString();

        await publisher.PublishAsync(webhook, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await publisher.PublishAsync(webhook with { Payload = JsonElementOf("""{"customer":{"id":7,"tier":"gold"},"amount":12.5,"orderId":42}""") }, Guid.NewGuid());

        await Eventually.AssertAsync(() => Assert.Equal(1, duplicates.Count));
        await fixture.AssertDrainedAsync(worker, WebhookQueue);
        Assert.Equal(0, conflicts.Count);
        Assert.Single(receiver.Deliveries);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task Job_and_inbox_rows_an_older_pod_fingerprinted_in_arrival_order_take_the_same_webhook_for_the_same_command(int inboxBatchSize)
    {
        // Rows from before the fingerprint put object members in name order: an older Api's job row for a
        // webhook whose payload is out of name order, queued, and then that webhook's inbox row as an older
        // worker wrote it. Its command, and a copy of it, must neither conflict nor get another remote key.
        const string WebhookQueue = "deliver-webhook";
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        using var duplicates = WorkerMetric.Duplicates(WebhookQueue);
        using var conflicts = WorkerMetric.Conflicts(WebhookQueue);
        var webhook = Webhook(receiver, """{"orderId":42,"amount":12.5}""");
        var key = webhook.WebhookId.ToString();
        var legacy = LegacyFingerprints.Of(webhook);
        Assert.NotEqual(legacy, PayloadFingerprint.Of(webhook));
        var jobId = await InsertAcceptedJobAsync(WebhookQueue, key, webhook, legacy);
        // Declared up front, as MassTransit would declare it for its first failed message, so it can be counted.
        await fixture.DeclareAsync(WebhookQueue + "_error");
        await using var worker = await fixture.StartWorkerAsync(WebhookSettings(inboxBatchSize));
        duplicates.Watch(worker.Services);
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(webhook, Guid.NewGuid());

        var job = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        Assert.Equal(jobId, job.Id);
        Assert.Equal(key, Assert.Single(receiver.Deliveries).Headers["Idempotency-Key"]);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Database.ExecuteSqlInterpolatedAsync(
                $"UPDATE inbox SET payload_hash = {legacy} WHERE consumer_id = {WebhookQueue} AND message_key = {key}"));
        }

        await publisher.PublishAsync(webhook, Guid.NewGuid());

        await Eventually.AssertAsync(() => Assert.Equal(1, duplicates.Count));
        await fixture.AssertDrainedAsync(worker, WebhookQueue);
        Assert.Equal(0, conflicts.Count);
        Assert.Equal(0u, await fixture.ReadyAsync(WebhookQueue + "_error"));
        Assert.Single(receiver.Deliveries);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_direct_publish_of_another_command_for_a_job_the_Api_accepted_goes_to_the_error_queue_and_the_Api_command_runs(int inboxBatchSize)
    {
        // The Api has committed the job's row for its command and not yet published it (or its command
        // waits behind others): a producer publishes another command under the same paymentId first.
        await using var gateway = await FakePaymentGateway.StartAsync();
        using var conflicts = WorkerMetric.Conflicts(Queue);
        var accepted = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-accepted", AmountMinor = 2_000, Currency = "EUR" };
        var key = accepted.PaymentId.ToString();
        var jobId = await InsertAcceptedJobAsync("charge-payment", key, accepted);
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize));
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(accepted with { AmountMinor = 7_777 }, Guid.NewGuid());

        var dead = await SingleDeadLetteredAsync(Queue + "_error");
        Assert.Equal(ConflictType, dead.Header("MT-Fault-ExceptionType"));
        Assert.Equal(jobId.ToString(), dead.Header("Conveyor-Job-Id"));
        await using (var db = fixture.CreateDbContext())
        {
            var untouched = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
            Assert.Equal((JobStatus.Queued, 0, null), (untouched.Status, untouched.Attempts, untouched.LastError));
            Assert.False(await db.Inbox.AnyAsync(i => i.MessageKey == key), "the conflicting message left its inbox row");
        }

        // The Api's command, when it comes, runs.
        await publisher.PublishAsync(accepted, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(1, conflicts.Count);
        Assert.Equal(2_000, gateway.Charges.Single(c => c.IdempotencyKey == key).AmountMinor);
        Assert.Equal(1, gateway.RequestsFor(key));
    }

    [Fact]
    public async Task A_direct_publish_of_another_report_for_a_job_the_Api_accepted_goes_to_the_error_queue_and_the_lease_goes_with_it()
    {
        const string ReportQueue = "generate-report";
        using var conflicts = WorkerMetric.Conflicts(ReportQueue);
        var accepted = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-accepted-report", Currency = "EUR" };
        var key = accepted.ReportId.ToString();
        var jobId = await InsertAcceptedJobAsync("generate-report", key, accepted);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(accepted with { Currency = "USD" }, Guid.NewGuid());

        var dead = await SingleDeadLetteredAsync(ReportQueue + "_error");
        Assert.Equal(ConflictType, dead.Header("MT-Fault-ExceptionType"));
        await using (var db = fixture.CreateDbContext())
        {
            var untouched = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
            Assert.Equal((JobStatus.Queued, 0, null), (untouched.Status, untouched.Attempts, untouched.LastError));
            Assert.False(await db.Inbox.AnyAsync(i => i.MessageKey == key), "the conflicting message left its lease behind");
        }

        await publisher.PublishAsync(accepted, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, ReportQueue);
        Assert.Equal(1, conflicts.Count);
        await using var check = fixture.CreateDbContext();
        Assert.Equal("EUR", (await check.Reports.SingleAsync(r => r.ReportId == accepted.ReportId)).Currency);
    }

    [Fact]
    public async Task The_Api_refuses_another_command_under_a_business_id_a_direct_publish_created_the_job_for()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize: 16));
        await using var api = await fixture.StartApiAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var direct = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-direct", AmountMinor = 300, Currency = "EUR" };
        await publisher.PublishAsync(direct, Guid.NewGuid());
        var job = await fixture.WaitForJobAsync(direct.PaymentId.ToString(), JobStatus.Succeeded);

        using var other = await api.Client.PostJobAsync("charge-payment", JsonSerializer.Serialize(direct with { AmountMinor = 301 }, Web));
        using var same = await api.Client.PostJobAsync("charge-payment", JsonSerializer.Serialize(direct, Web));

        Assert.Equal(422, (int)other.StatusCode);
        Assert.Equal(202, (int)same.StatusCode);
        Assert.Equal(job.Id, (await same.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("jobId").GetGuid());
    }

    [Fact]
    public async Task A_second_command_whose_claim_waited_for_the_first_ones_failed_attempt_goes_to_the_error_queue_and_the_first_runs()
    {
        // One message at a time (no batches). The first command's attempt holds its new inbox and job rows
        // uncommitted while the gateway holds its answer; the second's claim starts then and waits for the
        // inbox key. The first fails (503), lets its inbox row go and commits its job row: the second's
        // insert goes through, and its claim must still find that job row, which its statement's snapshot
        // predates. It is the conflict; the first runs on its retry.
        await using var gateway = await FakePaymentGateway.StartAsync();
        using var release = new ManualResetEventSlim();
        var held = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var requests = 0;
        gateway.OnRequest = () =>
        {
            if (Interlocked.Increment(ref requests) == 1)
            {
                held.TrySetResult();
                release.Wait(TimeSpan.FromSeconds(60));
            }
        };
        gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
        using var conflicts = WorkerMetric.Conflicts(Queue);
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize: 1));
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var first = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-waited", AmountMinor = 700, Currency = "EUR" };
        var key = first.PaymentId.ToString();

        await publisher.PublishAsync(first, Guid.NewGuid());
        await held.Task.WaitAsync(Eventually.DefaultTimeout);
        await publisher.PublishAsync(first with { AmountMinor = 800 }, Guid.NewGuid());
        await fixture.WaitForLockWaitersAsync(1);
        release.Set();

        var job = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        var dead = await SingleDeadLetteredAsync(Queue + "_error");
        Assert.Equal(ConflictType, dead.Header("MT-Fault-ExceptionType"));
        using (var body = JsonDocument.Parse(dead.Body))
        {
            Assert.Equal(800, body.RootElement.GetProperty("message").GetProperty("amountMinor").GetInt64());
        }

        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(1, conflicts.Count);
        Assert.Equal((key, 700), (gateway.Charges.Single().IdempotencyKey, gateway.Charges.Single().AmountMinor));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(700, (await db.Ledger.SingleAsync(l => l.PaymentId == first.PaymentId)).AmountMinor);
        Assert.Equal(PayloadFingerprint.Of(first), job.PayloadHash);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_corrected_command_under_the_key_of_a_dead_lettered_job_runs(int inboxBatchSize)
    {
        // The first command failed for good (refused as invalid): it owns the key no more, so a producer
        // that fixes it and publishes again under the same paymentId gets it run.
        await using var gateway = await FakePaymentGateway.StartAsync();
        using var conflicts = WorkerMetric.Conflicts(Queue);
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize));
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var invalid = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-fixed", AmountMinor = 0, Currency = "EUR" };
        var key = invalid.PaymentId.ToString();

        await publisher.PublishAsync(invalid, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.DeadLettered);
        await publisher.PublishAsync(invalid with { AmountMinor = 450 }, Guid.NewGuid());

        var job = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(0, conflicts.Count);
        // Charged under a key of its own, which the refused command never used (RemoteIdempotencyKeys).
        var corrected = PayloadFingerprint.Of(invalid with { AmountMinor = 450 });
        Assert.Equal(450, gateway.Charges.Single(c => c.IdempotencyKey == $"{key}:{Convert.ToHexStringLower(corrected!)}").AmountMinor);
        // The job is the corrected command's now: another command under its key is the conflict.
        Assert.Equal(corrected, job.PayloadHash);
        Assert.Equal(PayloadFingerprint.Of(invalid), job.OriginalPayloadHash);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_corrected_charge_after_a_declined_one_is_charged_under_a_key_of_its_own_on_every_attempt(int inboxBatchSize)
    {
        // A gateway keeps its answer per Idempotency-Key, a decline too, and refuses a key reused with
        // other parameters: under the declined payment's key the corrected one could never be charged.
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, inboxBatchSize));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var declined = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-declined", AmountMinor = 125_000, Currency = "EUR" };
        var key = declined.PaymentId.ToString();
        gateway.DeclineNext(1);

        await publisher.PublishAsync(declined, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.DeadLettered);
        Assert.Equal(1, gateway.RequestsFor(key));

        // The corrected command's first call fails on the way: its retry, after the takeover was
        // recorded in the job row, must ask under the same key, or a lost answer would charge twice.
        gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
        var correction = declined with { AmountMinor = 25_000 };
        await publisher.PublishAsync(correction, Guid.NewGuid());

        var job = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, Queue);
        var correctedKey = $"{key}:{Convert.ToHexStringLower(PayloadFingerprint.Of(correction)!)}";
        var charge = Assert.Single(gateway.Charges);
        Assert.Equal((correctedKey, 25_000), (charge.IdempotencyKey, charge.AmountMinor));
        Assert.Equal(2, gateway.RequestsFor(correctedKey));
        Assert.Equal(1, gateway.RequestsFor(key));
        Assert.Equal(0, gateway.ReusedKeyRequestsFor(key));
        Assert.Equal(3, job.Attempts);
        await using var db = fixture.CreateDbContext();
        var ledger = await db.Ledger.SingleAsync(l => l.PaymentId == declined.PaymentId);
        Assert.Equal((25_000, charge.Id), (ledger.AmountMinor, ledger.GatewayChargeId));
        Assert.Equal(PayloadFingerprint.Of(declined), job.OriginalPayloadHash);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_corrected_webhook_after_one_its_receiver_refused_is_sent_under_a_key_of_its_own(int inboxBatchSize)
    {
        // A receiver keeps each Idempotency-Key with the first body sent under it, a refused one too, and
        // answers 422 for the key with another body: under the refused webhook's key the corrected one
        // could never be delivered.
        const string WebhookQueue = "deliver-webhook";
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.RefusesKeyReuse = true;
        receiver.AnswerWith = HttpStatusCode.UnprocessableEntity;
        var settings = WorkerSettings.With();
        settings["Consumers:DeliverWebhook:InboxBatchSize"] = inboxBatchSize.ToString(CultureInfo.InvariantCulture);
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var refused = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "order.paid",
            Payload = JsonSerializer.SerializeToElement(new { orderId = 7, total = "ten" }),
        };
        var key = refused.WebhookId.ToString();

        await publisher.PublishAsync(refused, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.DeadLettered);
        receiver.AnswerWith = null;
        var corrected = refused with { Payload = JsonSerializer.SerializeToElement(new { orderId = 7, total = "10.00" }) };
        await publisher.PublishAsync(corrected, Guid.NewGuid());

        await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, WebhookQueue);
        Assert.Equal(2, receiver.Deliveries.Count);
        var delivered = receiver.Deliveries.Last();
        Assert.Equal($"{key}:{Convert.ToHexStringLower(PayloadFingerprint.Of(corrected)!)}", delivered.Headers["Idempotency-Key"]);
        // The receiver still knows it by its webhook id.
        Assert.Equal(key, delivered.Headers[Conveyor.Worker.Webhooks.WebhookSender.WebhookIdHeader]);
        Assert.Equal(key, receiver.Deliveries.First().Headers["Idempotency-Key"]);
    }

    [Fact]
    public async Task A_corrected_report_under_the_key_of_a_dead_lettered_one_runs()
    {
        const string ReportQueue = "generate-report";
        using var conflicts = WorkerMetric.Conflicts(ReportQueue);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        conflicts.Watch(worker.Services);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var invalid = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-fixed-report", PageSize = 0 };
        var key = invalid.ReportId.ToString();

        await publisher.PublishAsync(invalid, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.DeadLettered);
        await publisher.PublishAsync(invalid with { PageSize = 100 }, Guid.NewGuid());

        var job = await fixture.WaitForJobAsync(key, JobStatus.Succeeded);
        await fixture.AssertDrainedAsync(worker, ReportQueue);
        Assert.Equal(0, conflicts.Count);
        Assert.Equal(PayloadFingerprint.Of(invalid with { PageSize = 100 }), job.PayloadHash);
    }

    /// <summary>Waits for exactly one message in <paramref name="errorQueue"/> and takes it.</summary>
    private async Task<RawAmqpProducer.TakenMessage> SingleDeadLetteredAsync(string errorQueue)
    {
        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await amqp.TakeAllAsync(errorQueue)));
        return dead!;
    }

    /// <summary>A job row as the Api commits it before publishing: queued, with its command's fingerprint.</summary>
    /// <param name="fingerprint">The fingerprint the row holds, if not the command's.</param>
    private async Task<Guid> InsertAcceptedJobAsync(string kind, string key, object command, byte[]? fingerprint = null)
    {
        await using var db = fixture.CreateDbContext();
        var now = DateTimeOffset.UtcNow;
        var job = new Job
        {
            Id = Guid.CreateVersion7(), Kind = kind, BusinessKey = key, Status = JobStatus.Queued,
            PayloadHash = fingerprint ?? PayloadFingerprint.Of(command), CreatedAt = now, UpdatedAt = now,
        };
        db.Jobs.Add(job);
        await db.SaveChangesAsync();
        return job.Id;
    }

    private static DeliverWebhook Webhook(FakeWebhookReceiver receiver, string payload) => new()
    {
        WebhookId = Guid.NewGuid(), Url = receiver.Url(), EventType = "order.paid", Payload = JsonElementOf(payload),
    };

    private static JsonElement JsonElementOf(string json)
    {
        using var document = JsonDocument.Parse(json);
        return document.RootElement.Clone();
    }

    private static Dictionary<string, string?> WebhookSettings(int inboxBatchSize)
    {
        var settings = WorkerSettings.With();
        settings["Consumers:DeliverWebhook:InboxBatchSize"] = inboxBatchSize.ToString(CultureInfo.InvariantCulture);
        return settings;
    }

    private static Dictionary<string, string?> Settings(FakePaymentGateway gateway, int inboxBatchSize)
    {
        var settings = WorkerSettings.With(gateway);
        settings["Consumers:ChargePayment:InboxBatchSize"] = inboxBatchSize.ToString(CultureInfo.InvariantCulture);
        return settings;
    }
}
