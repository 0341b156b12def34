using System.Globalization;
using System.Net;
using System.Text.Json;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Redelivery;

/// <summary>
/// A command whose headers are within <c>MaxHeaderBytes</c> stays within it as a delayed redelivery. The
/// worker adds its bookkeeping to the stored copy (attempt, first failure, seal, last error) and its
/// client adds a publish sequence number: counted against the limit, a command that arrived just
/// under it came back over it and was refused for its headers instead of being retried, or the store
/// dropped the sender's largest header to make room for the worker's own.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class RedeliveredHeaderSizeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    /// <summary>
    /// The pad's table entry (name, type and length) and room for the publish sequence number the
    /// producer's client adds: the command's headers end within 64 bytes of the limit.
    /// </summary>
    private const int UnderTheLimit = 11 + 64;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <param name="maxHeaderBytes">A limit set lower than the store's own bound, and the default.</param>
    [Theory]
    [InlineData(16_384)]
    [InlineData(65_536)]
    public async Task A_charge_whose_headers_are_just_under_the_limit_is_retried_after_a_transient_failure_and_keeps_its_headers(int maxHeaderBytes)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:MaxHeaderBytes", maxHeaderBytes.ToString(CultureInfo.InvariantCulture)),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "1"),
            // Far beyond the test: the redelivery comes when the test makes it due.
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000")));
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var payment = Guid.NewGuid();
        var pad = new string('p', maxHeaderBytes - UnderTheLimit);

        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = payment, accountId = "acct-near-the-limit", amountMinor = 1250, currency = "EUR" },
            headers: new Dictionary<string, string> { ["X-Pad"] = pad });

        await fixture.WaitForJobAsync(payment, JobStatus.RetryScheduled);
        // Stored with the headers it was sent with and the worker's own, nothing else: nothing of the
        // sender's made room for the worker's, and no part of MassTransit's view of the delivery (its
        // exchange, consumer tag, delivery tag, message id) became a header of the copy.
        await using (var db = fixture.CreateDbContext())
        {
            var stored = JsonSerializer.Deserialize<Dictionary<string, string>>((await db.ScheduledMessages.AsNoTracking().SingleAsync()).Headers)!;
            Assert.Equal(
                ["Conveyor-First-Failure-At", "Conveyor-Last-Error", "Conveyor-Redelivery-Attempt", "Conveyor-Redelivery-Seal", "X-Pad"],
                stored.Keys.Order(StringComparer.Ordinal));
            Assert.Equal(pad, stored["X-Pad"]);
        }

        await fixture.MakeScheduledMessagesDueAsync();

        // Before, at 16 KiB the redelivered copy was refused for its headers and the charge dead-lettered.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == payment.ToString());
            Assert.Equal((JobStatus.Succeeded, 2), (job.Status, job.Attempts));
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
        Assert.Equal(2, gateway.RequestsFor(payment.ToString()));
        Assert.Single(gateway.Charges);
        Assert.Empty(await producer.TakeAllAsync("charge-payment_error"));
    }

    [Fact]
    public async Task A_charge_whose_headers_are_just_under_the_limit_runs_when_an_operator_moves_it_back_from_the_error_queue()
    {
        // A move back gives the copy a fault history and says where it came from and which operation moved
        // it. Counted against the limit, a command that had come just under it was refused for its headers
        // when moved back, and went straight back to _error: no way to run it again.
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:MaxHeaderBytes", "16384")));
        await ErrorQueues.ErrorQueueKit.ClearOperationsAsync(fixture);
        await using var api = await fixture.StartApiAsync(ErrorQueues.ErrorQueueKit.ApiSettings());
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var payment = Guid.NewGuid();
        var pad = new string('p', 16_384 - UnderTheLimit);

        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = payment, accountId = "acct-moved-near-the-limit", amountMinor = 1250, currency = "EUR" },
            headers: new Dictionary<string, string> { ["X-Pad"] = pad });
        await fixture.WaitForJobAsync(payment, JobStatus.DeadLettered);
        Assert.Equal(1, gateway.RequestsFor(payment.ToString()));

        gateway.FailEverythingWith = null;
        using var admin = ErrorQueues.ErrorQueueKit.Client(api.BaseAddress);
        var moved = await ErrorQueues.ErrorQueueKit.RunOperationAsync(admin, "/api/error-queues/charge-payment_error/move", new { });
        Assert.Equal(("succeeded", 1L), (moved.GetProperty("state").GetString(), moved.GetProperty("moved").GetInt64()));

        var job = await fixture.WaitForJobAsync(payment, JobStatus.Succeeded);
        Assert.Equal(2, job.Attempts);
        Assert.Equal((2, 1), (gateway.RequestsFor(payment.ToString()), gateway.SuccessfulRequestsFor(payment.ToString())));
        await fixture.AssertDrainedAsync(worker, "charge-payment");
        Assert.Empty(await producer.TakeAllAsync("charge-payment_error"));
    }

    [Fact]
    public async Task A_sender_cannot_pass_more_than_the_limit_under_the_workers_own_header_names()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:MaxHeaderBytes", "16384")));
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var (modest, stuffed) = (Guid.NewGuid(), Guid.NewGuid());
        var pad = new string('p', 16_384 - UnderTheLimit);

        // The worker's own names are left uncounted only up to an allowance (4 KiB): 1 KiB under one of
        // them passes, 8 KiB is over the limit by what exceeds the allowance.
        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = modest, accountId = "acct-own-names", amountMinor = 100, currency = "EUR" },
            headers: new Dictionary<string, string> { ["X-Pad"] = pad, ["Conveyor-Last-Error"] = new string('e', 1_024) });
        await producer.PublishEnvelopeAsync(ChargeExchange, ChargeUrn,
            new { paymentId = stuffed, accountId = "acct-own-names", amountMinor = 100, currency = "EUR" },
            headers: new Dictionary<string, string> { ["X-Pad"] = pad, ["Conveyor-Last-Error"] = new string('e', 8_192) });

        await fixture.WaitForJobAsync(modest, JobStatus.Succeeded);
        var error = await producer.TakeOnlyAsync("charge-payment_error", () => PipelineState.DescribeAsync(fixture));
        Assert.Contains(stuffed.ToString(), System.Text.Encoding.UTF8.GetString(error.Body), StringComparison.Ordinal);
        Assert.Contains("the limit is 16384", error.Header("MT-Fault-Message"), StringComparison.Ordinal);
        Assert.Equal(0, gateway.RequestsFor(stuffed.ToString()));
    }
}
