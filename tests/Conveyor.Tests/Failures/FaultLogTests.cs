using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Failures;

/// <summary>
/// An attempt that fails and will be tried again is logged by the worker at Warning ("redelivery n of m
/// scheduled"); MassTransit's own fault line (R-FAULT, an Error with the stack trace) is kept for the
/// message that goes to <c>_error</c>, so alerts on Error logs do not fire for retries that heal.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class FaultLogTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_failure_that_is_redelivered_logs_no_error_and_a_dead_lettered_one_logs_one()
    {
        var logs = new CapturedLogs();
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(
            WorkerSettings.With(gateway).Override(
                ("Consumers:ChargePayment:RetryLimit", "0"),
                ("Consumers:ChargePayment:RedeliveryLimit", "2"),
                ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "200")),
            builder => builder.Logging.AddProvider(logs));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        // Fails twice (503, transient), then succeeds on its second redelivery.
        gateway.FailNext(2, HttpStatusCode.ServiceUnavailable);
        var healed = Payment();
        await publisher.PublishAsync(healed);
        await WaitForAsync(healed.PaymentId, JobStatus.Succeeded);

        Assert.Equal(2, logs.Entries.Count(e => e.Level == LogLevel.Warning && e.Message.Contains("redelivery", StringComparison.Ordinal)));
        Assert.DoesNotContain(logs.Entries, e => e.Level >= LogLevel.Error);

        // Refused for good (400): on its way to _error, the fault is logged as an Error once.
        gateway.FailEverythingWith = HttpStatusCode.BadRequest;
        var refused = Payment();
        await publisher.PublishAsync(refused);
        await WaitForAsync(refused.PaymentId, JobStatus.DeadLettered);
        await Eventually.AssertAsync(() =>
            Assert.Single(logs.Entries, e => e.Level == LogLevel.Error && e.Message.StartsWith("R-FAULT", StringComparison.Ordinal)));
    }

    private static ChargePayment Payment() =>
        new() { PaymentId = Guid.NewGuid(), AccountId = "acct-fault-log", AmountMinor = 500, Currency = "EUR" };

    private async Task WaitForAsync(Guid paymentId, string status) =>
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(status, (await db.Jobs.SingleOrDefaultAsync(j => j.BusinessKey == paymentId.ToString()))?.Status);
        });
}
