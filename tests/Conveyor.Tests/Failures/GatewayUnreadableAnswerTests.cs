using System.Globalization;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A 2xx charge answer whose body is no charge (a proxy's HTML page, JSON cut short, an id that is no
/// string, an unknown charset) fails the attempt as transient: the charge may have been made, and a later
/// attempt with the same Idempotency-Key gets it. The JSON reader's exception was taken for a malformed
/// message, and the job was dead-lettered at once with a charge the ledger never recorded.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class GatewayUnreadableAnswerTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "charge-payment";

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await fixture.DeclareAsync(Queue + "_error");
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(1, "html")]
    [InlineData(16, "html")]
    [InlineData(1, "truncated")]
    [InlineData(16, "truncated")]
    [InlineData(1, "id-number")]
    [InlineData(16, "id-number")]
    [InlineData(1, "unknown-charset")]
    [InlineData(16, "unknown-charset")]
    public async Task A_charge_answered_2xx_with_an_unreadable_body_is_asked_for_again_and_recorded_once(int inboxBatchSize, string answer)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        switch (answer)
        {
            case "html":
                gateway.AnswerNextChargesUnreadably(1, "text/html", _ => "<html>ok</html>");
                break;
            case "truncated":
                gateway.AnswerNextChargesUnreadably(1, "application/json", id => $$"""{"id":"{{id[..(id.Length / 2)]}}""");
                break;
            case "id-number":
                gateway.AnswerNextChargesUnreadably(1, "application/json", _ => """{"id":123}""");
                break;
            default:
                gateway.AnswerNextChargesUnreadably(1, "application/json; charset=x-no-such-charset", id => $$"""{"id":"{{id}}"}""");
                break;
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:InboxBatchSize", inboxBatchSize.ToString(CultureInfo.InvariantCulture)),
            ("Consumers:ChargePayment:RetryLimit", "2"),
            ("Consumers:ChargePayment:RetryMinIntervalMilliseconds", "50"),
            ("Consumers:ChargePayment:RedeliveryLimit", "2"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "200")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-unreadable-answer", AmountMinor = 2_300, Currency = "EUR" };
        var key = payment.PaymentId.ToString();

        await publisher.PublishAsync(payment);

        var job = await fixture.WaitForSettledJobAsync(key);
        Assert.True(job.Status == JobStatus.Succeeded, $"the job ended {job.Status}: {job.LastError}");
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal(0u, await fixture.ReadyAsync(Queue + "_error"));
        // Asked twice with one key: the unreadable answer, then the charge the gateway kept for the key.
        Assert.Equal(2, gateway.RequestsFor(key));
        var charge = Assert.Single(gateway.Charges);
        await using var db = fixture.CreateDbContext();
        var ledger = await db.Ledger.AsNoTracking().SingleAsync(l => l.PaymentId == payment.PaymentId);
        Assert.Equal(charge.Id, ledger.GatewayChargeId);
    }
}
