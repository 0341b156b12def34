using System.Globalization;
using System.Net;
using System.Text.Json;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// <c>Conveyor-Redelivery-Attempt</c> and <c>Conveyor-First-Failure-At</c> are the worker's bookkeeping
/// on its own redelivered copies. A sender that sets them (by mistake, or copying headers from a
/// message it consumed) must not spend a job's redeliveries, nor have its values shown as the job's.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class SpoofedRedeliveryHeadersTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string MessageUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";
    private const string Attempt = "Conveyor-Redelivery-Attempt";
    private const string FirstFailureAt = "Conveyor-First-Failure-At";
    private const string LongAgo = "2001-01-01T00:00:00.0000000+00:00";

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        // So that its emptiness can be read before anything was dead-lettered.
        await fixture.DeclareAsync("charge-payment_error");
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData("2")]
    [InlineData("4")]
    [InlineData("-1000000")]
    [InlineData("2147483647")]
    public async Task A_transient_failure_of_a_command_that_claims_earlier_redeliveries_is_still_redelivered(string claimed)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();

        await PublishChargeAsync(producer, paymentId, "EUR", new() { [Attempt] = claimed, [FirstFailureAt] = LongAgo });

        var job = await fixture.WaitForJobAsync(paymentId, JobStatus.RetryScheduled);
        Assert.Equal(1, job.Attempts);
        await using var db = fixture.CreateDbContext();
        var stored = await db.ScheduledMessages.AsNoTracking().SingleAsync();
        Assert.Equal(1, stored.Attempt);
        var headers = JsonSerializer.Deserialize<Dictionary<string, string>>(stored.Headers)!;
        Assert.Equal("1", headers[Attempt]);
        Assert.NotEqual(LongAgo, headers[FirstFailureAt]);
        Assert.Empty(await producer.TakeAllAsync("charge-payment_error"));
    }

    [Fact]
    public async Task A_dead_lettered_command_shows_the_workers_own_count_and_time_not_the_senders()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();
        var before = DateTimeOffset.UtcNow.AddMinutes(-1);

        // An unknown currency: permanent, straight to _error.
        await PublishChargeAsync(producer, paymentId, "XXX", new() { [Attempt] = "3", [FirstFailureAt] = LongAgo });

        await fixture.WaitForJobAsync(paymentId, JobStatus.DeadLettered);
        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await producer.TakeAllAsync("charge-payment_error")));
        Assert.Equal("0", dead!.Header(Attempt));
        var failedAt = DateTimeOffset.Parse(dead.Header(FirstFailureAt)!, CultureInfo.InvariantCulture);
        Assert.True(failedAt > before, $"first failure shown as {failedAt:O}");
    }

    [Fact]
    public async Task The_sealed_headers_of_one_jobs_redelivery_do_not_count_for_another_job()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(Settings(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var (first, second) = (Guid.NewGuid(), Guid.NewGuid());

        await PublishChargeAsync(producer, first, "EUR", []);
        await fixture.WaitForJobAsync(first, JobStatus.RetryScheduled);
        Dictionary<string, string> sealedHeaders;
        await using (var db = fixture.CreateDbContext())
        {
            sealedHeaders = JsonSerializer.Deserialize<Dictionary<string, string>>((await db.ScheduledMessages.AsNoTracking().SingleAsync()).Headers)!;
        }

        // The first job's redelivery bookkeeping, seal and all, copied onto another job's command: the
        // seal is genuine, but not this job's, so the second job's first failure is its first.
        Assert.Equal("1", sealedHeaders[Attempt]);
        var copied = sealedHeaders.Where(h => h.Key.StartsWith("Conveyor-", StringComparison.Ordinal)).ToDictionary();
        await PublishChargeAsync(producer, second, "EUR", copied);

        await fixture.WaitForJobAsync(second, JobStatus.RetryScheduled);
        await using var check = fixture.CreateDbContext();
        var stored = await check.ScheduledMessages.AsNoTracking().ToListAsync();
        Assert.Equal([1, 1], stored.Select(s => s.Attempt));
        Assert.Empty(await producer.TakeAllAsync("charge-payment_error"));
    }

    [Theory]
    [InlineData("CONVEYOR-REDELIVERY-SEAL")]
    [InlineData("CONVEYOR-REDELIVERY-ATTEMPT")]
    public async Task A_senders_header_in_other_casing_does_not_take_the_place_of_the_workers_own_so_redeliveries_run_out(string forged)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "2"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "200"),
            ("Consumers:ChargePayment:KillSwitchTripPercent", "0")));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var paymentId = Guid.NewGuid();

        await PublishChargeAsync(producer, paymentId, "EUR", new() { [forged] = "0" });

        // Before: every stored copy carried the sender's header first, read instead of the worker's own,
        // so each redelivery counted as the first and the job was redelivered for ever.
        var job = await fixture.WaitForJobAsync(paymentId, JobStatus.DeadLettered);
        Assert.Equal(3, job.Attempts);
        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await producer.TakeAllAsync("charge-payment_error")));
        Assert.Equal("2", dead!.Header(Attempt));
        Assert.Equal(3, gateway.RequestsFor(paymentId.ToString()));
    }

    private static Dictionary<string, string?> Settings(FakePaymentGateway gateway) => WorkerSettings.With(gateway).Override(
        ("Consumers:ChargePayment:RetryLimit", "0"),
        ("Consumers:ChargePayment:RedeliveryLimit", "2"),
        // Long enough that the stored redelivery is still there to read.
        ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000"),
        ("Consumers:ChargePayment:KillSwitchTripPercent", "0"));

    private static Task PublishChargeAsync(RawAmqpProducer producer, Guid paymentId, string currency, Dictionary<string, string> headers) =>
        producer.PublishEnvelopeAsync(
            Exchange, MessageUrn, new { paymentId, accountId = "acct-spoof", amountMinor = 700, currency }, headers: headers);
}
