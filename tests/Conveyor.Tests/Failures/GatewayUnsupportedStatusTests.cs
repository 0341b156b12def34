using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// The payment gateway is one remote side the operator configures: a 501 or 505 from it (or from a proxy in
/// front of it) says every charge is refused until the operator or the gateway changes something, as an
/// outage does. Each payment is then retried and redelivered and the kill switch pauses the endpoint, as for
/// a 503, where taking them for permanent dead-lettered every payment at once. A webhook receiver's 501 and
/// 505 stay permanent (<see cref="WebhookUnusableAnswerTests"/>).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class GatewayUnsupportedStatusTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(HttpStatusCode.NotImplemented, "answered 501 NotImplemented")]
    [InlineData(HttpStatusCode.HttpVersionNotSupported, "answered 505 HttpVersionNotSupported")]
    public async Task A_gateway_answering_a_status_about_what_it_does_is_retried_and_trips_the_kill_switch(HttpStatusCode status, string reason)
    {
        const int payments = 6;
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = status;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:PrefetchCount", "2"),
            ("Consumers:ChargePayment:ConcurrentMessageLimit", "1"),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "3"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000"),
            ("Consumers:ChargePayment:KillSwitchActivationThreshold", "2"),
            ("Consumers:ChargePayment:KillSwitchTripPercent", "20"),
            ("Consumers:ChargePayment:KillSwitchTrackingPeriodSeconds", "60"),
            // A pause far longer than the test: once tripped, the endpoint stays stopped.
            ("Consumers:ChargePayment:KillSwitchRestartSeconds", "600")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var sent = Enumerable.Range(0, payments).Select(i => new ChargePayment
        {
            PaymentId = Guid.NewGuid(),
            AccountId = "acct-unsupported",
            AmountMinor = 100 + i,
            Currency = "EUR",
        }).ToList();

        foreach (var payment in sent)
        {
            await publisher.PublishAsync(payment);
        }

        // The first payment is tried once and waits for a redelivery, its reason kept.
        var first = await fixture.WaitForJobAsync(sent[0].PaymentId.ToString(), JobStatus.RetryScheduled, attempts: 1);
        Assert.Contains(reason, first.LastError, StringComparison.Ordinal);
        Assert.NotNull(first.NextAttemptAt);

        // The kill switch trips: the endpoint stops consuming, and payments wait in the queue untried.
        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(0u, await fixture.ConsumersAsync("charge-payment"));
            Assert.True(await fixture.ReadyAsync("charge-payment") > 0, "nothing waits in the queue");
        }, () => PipelineState.DescribeAsync(fixture));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync(j => j.Status == JobStatus.DeadLettered));
        Assert.Empty(gateway.Charges);
    }
}
