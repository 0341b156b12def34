using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
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

        var job = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.Succeeded);
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
        var webhook = InvoiceWebhook(receiver, 7);

        await publisher.PublishAsync(webhook);

        var job = await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.DeadLettered);
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
    public async Task A_webhook_receiver_that_asks_to_retry_after_30_s_is_not_asked_again_in_memory_but_left_to_the_redelivery()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.TooManyRequests;
        receiver.RetryAfter = TimeSpan.FromSeconds(30);
        await using var worker = await fixture.StartWorkerAsync(Settings(null, ("Consumers:DeliverWebhook:RetryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = InvoiceWebhook(receiver, 8);

        await publisher.PublishAsync(webhook);

        // The redelivery is stored before the job says so, and only after the in-memory retries.
        var job = await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.RetryScheduled);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        Assert.Single(receiver.Deliveries);
        Assert.Equal(1, job.Attempts);
        Assert.Contains("429", job.LastError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_payment_gateway_that_asks_to_retry_after_30_s_is_not_asked_again_in_memory_but_left_to_the_redelivery()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.TooManyRequests;
        gateway.RetryAfter = TimeSpan.FromSeconds(30);
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway, ("Consumers:ChargePayment:RetryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = Payment();

        await publisher.PublishAsync(payment);

        var job = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.RetryScheduled);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        Assert.Equal(1, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(1, job.Attempts);
    }

    [Fact]
    public async Task A_gateway_that_asks_to_retry_after_30_s_when_no_redelivery_is_left_still_gets_the_in_memory_retries()
    {
        // Nothing would wait the 30 s out (no redelivery configured): ending the in-memory retries for it
        // dead-lettered the job after one attempt of the three configured, though the next one succeeds.
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailNext(1, HttpStatusCode.TooManyRequests);
        gateway.RetryAfter = TimeSpan.FromSeconds(30);
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway,
            ("Consumers:ChargePayment:RetryLimit", "2"),
            ("Consumers:ChargePayment:RedeliveryLimit", "0")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = Payment();

        await publisher.PublishAsync(payment);

        var job = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.Succeeded);
        Assert.Equal(2, job.Attempts);
        Assert.Equal(2, gateway.RequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(1, gateway.SuccessfulRequestsFor(payment.PaymentId.ToString()));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }

    [Fact]
    public async Task A_worker_whose_clock_runs_ahead_stores_its_redelivery_due_by_the_databases_clock()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway,
                ("Consumers:ChargePayment:RetryLimit", "0"),
                ("Consumers:ChargePayment:RedeliveryLimit", "2"),
                ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "60000"),
                ("Consumers:ChargePayment:RedeliveryJitter", "0.1")),
            builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromMinutes(10))));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = Payment();

        await publisher.PublishAsync(payment);

        // Due a minute (within its jitter) from now by the clock every dispatcher reads, not eleven: this
        // pod's clock is ten minutes ahead. The job shows the same time for its next attempt.
        var job = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.RetryScheduled);
        await using var db = fixture.CreateDbContext();
        var row = await db.ScheduledMessages.AsNoTracking().SingleAsync();
        var databaseNow = await db.Database.SqlQuery<DateTimeOffset>($"SELECT clock_timestamp() AS \"Value\"").SingleAsync();
        Assert.InRange(row.DueAt - databaseNow, TimeSpan.FromSeconds(40), TimeSpan.FromSeconds(66));
        Assert.Equal(row.DueAt, job.NextAttemptAt);
    }

    [Fact]
    public async Task An_always_transient_failure_is_redelivered_at_the_configured_delays_then_dead_lettered()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.BadGateway;
        // When the first attempt reached the gateway: its failure, and so its time, came after it.
        DateTimeOffset? firstRequestAt = null;
        gateway.OnRequest = () => firstRequestAt ??= DateTimeOffset.UtcNow;
        await using var stored = await StoredRedeliveries.StartAsync(fixture);
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
        var job = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.DeadLettered);
        Assert.Equal(3, job.Attempts);
        Assert.Equal(3, gateway.RequestsFor(payment.PaymentId.ToString()));

        // The schedule as the worker stored it, on the database's clock (this machine's): each due time is the
        // row's store time (created_at) plus its delay, both read in the one statement that stores the row, so
        // the first is exactly the base delay within its jitter (from one reading of the clock; the millisecond allowed is for rounding), and
        // the second the doubled delay within its jitter, not the base delay or a tripled one. Counted from the
        // failure's time (the first failure's header), it would also hold the moment between the failure and
        // the store, which a busy machine stretches at will: a delay drawn near the top of its jitter read as
        // too long. That header is the first failure's own time: after its request reached the gateway, before
        // its redelivery was stored; and the second copy carries it on.
        var rows = await stored.ReadAsync();
        Assert.Equal([1, 2], rows.Select(r => r.Attempt));
        var (first, second) = (rows[0], rows[1]);
        var failedAt = DateTimeOffset.Parse(first.FirstFailureAt!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange((first.DueAt - first.CreatedAt).TotalMilliseconds, 1500 * 0.9, 1500 * 1.1 + 1);
        Assert.InRange((second.DueAt - second.CreatedAt).TotalMilliseconds, 3000 * 0.9, 3000 * 1.1 + 1);
        Assert.NotNull(firstRequestAt);
        Assert.True(firstRequestAt <= failedAt, $"first failure at {failedAt:O}, before its request reached the gateway at {firstRequestAt:O}");
        Assert.True(failedAt <= first.CreatedAt, $"first failure at {failedAt:O}, after its redelivery was stored at {first.CreatedAt:O}");
        Assert.Equal(first.FirstFailureAt, second.FirstFailureAt);
        // Never early: the second failure came once the first redelivery was due, the last (the one
        // that dead-lettered the job) once the second was.
        Assert.True(second.CreatedAt >= first.DueAt, $"second failure at {second.CreatedAt:O}, first redelivery due {first.DueAt:O}");
        Assert.True(job.FinishedAt >= second.DueAt, $"last failure at {job.FinishedAt:O}, second redelivery due {second.DueAt:O}");
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

        var job = await fixture.WaitForJobAsync(paymentId, JobStatus.RetryScheduled);
        Assert.Equal(1, job.Attempts);
        await using var check = fixture.CreateDbContext();
        var stored = await check.ScheduledMessages.SingleAsync();
        Assert.Equal(RawAmqpProducer.EnvelopeContentType, stored.ContentType);
        using var headers = JsonDocument.Parse(stored.Headers);
        Assert.Equal("beforeafter", headers.RootElement.GetProperty("X-Trace-Note").GetString());
    }

    [Fact]
    public async Task A_redelivery_whose_storing_times_out_once_goes_back_to_its_queue_instead_of_dead_lettering_the_job()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        // The first store of a redelivery is cancelled as PostgreSQL cancels a statement at its statement_timeout.
        await using var busy = await TestTrigger.CreateAsync(fixture, "test_store_times_out", "scheduled_messages", """
            CREATE SEQUENCE test_store_times_out;
            CREATE FUNCTION test_store_times_out() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('test_store_times_out') = 1 THEN
                RAISE EXCEPTION 'test: canceling statement due to statement timeout' USING ERRCODE = '57014';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER test_store_times_out BEFORE INSERT ON scheduled_messages
              FOR EACH ROW EXECUTE FUNCTION test_store_times_out();
            """);
        await fixture.DeclareAsync("charge-payment_error");
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway,
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-busy-store", AmountMinor = 700, Currency = "EUR" };

        await publisher.PublishAsync(payment);

        // Delivered again from its queue, it failed again and its redelivery was stored: no _error copy.
        var job = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.RetryScheduled);
        Assert.Equal(2, await busy.FiredAsync());
        Assert.Equal(2, job.Attempts);
        Assert.Equal(0u, await fixture.ReadyAsync("charge-payment_error"));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(1, await check.ScheduledMessages.CountAsync());
    }

    private static DeliverWebhook InvoiceWebhook(FakeWebhookReceiver receiver, int invoice) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = receiver.Url(),
        EventType = "invoice.created",
        Payload = JsonSerializer.SerializeToElement(new { invoice }),
    };

    /// <summary>
    /// A copy of every row stored in <c>scheduled_messages</c> while the test runs, made by a trigger:
    /// the dispatcher deletes a row as soon as it has published it, before a test could be sure to read it.
    /// </summary>
    private sealed class StoredRedeliveries(ConveyorFixture fixture) : IAsyncDisposable
    {
        public static async Task<StoredRedeliveries> StartAsync(ConveyorFixture fixture)
        {
            await using var db = fixture.CreateDbContext();
            await db.Database.ExecuteSqlRawAsync("""
                CREATE TABLE test_stored_redeliveries (attempt integer, due_at timestamptz, created_at timestamptz, first_failure_at text);
                CREATE FUNCTION test_copy_stored_redelivery() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  INSERT INTO test_stored_redeliveries VALUES (NEW.attempt, NEW.due_at, NEW.created_at, NEW.headers ->> 'Conveyor-First-Failure-At');
                  RETURN NULL;
                END $$;
                CREATE TRIGGER test_copy_stored_redelivery AFTER INSERT ON scheduled_messages
                  FOR EACH ROW EXECUTE FUNCTION test_copy_stored_redelivery();
                """);
            return new StoredRedeliveries(fixture);
        }

        public async Task<IReadOnlyList<Row>> ReadAsync()
        {
            await using var connection = new Npgsql.NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            await using var select = new Npgsql.NpgsqlCommand(
                "SELECT attempt, due_at, created_at, first_failure_at FROM test_stored_redeliveries ORDER BY attempt", connection);
            await using var reader = await select.ExecuteReaderAsync();
            var rows = new List<Row>();
            while (await reader.ReadAsync())
            {
                rows.Add(new Row(
                    reader.GetInt32(0),
                    reader.GetFieldValue<DateTimeOffset>(1),
                    reader.GetFieldValue<DateTimeOffset>(2),
                    reader.IsDBNull(3) ? null : reader.GetString(3)));
            }

            return rows;
        }

        public async ValueTask DisposeAsync()
        {
            await using var db = fixture.CreateDbContext();
            await db.Database.ExecuteSqlRawAsync("""
                DROP TRIGGER IF EXISTS test_copy_stored_redelivery ON scheduled_messages;
                DROP FUNCTION IF EXISTS test_copy_stored_redelivery();
                DROP TABLE IF EXISTS test_stored_redeliveries;
                """);
        }

        public sealed record Row(int Attempt, DateTimeOffset DueAt, DateTimeOffset CreatedAt, string? FirstFailureAt);
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
