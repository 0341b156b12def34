using System.Text;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A redirect from <c>PaymentGateway:BaseUrl</c> is not followed. The gateway's HTTP client followed it: a 307 or
/// 308 sent the charge, its body and Idempotency-Key, to whatever host the <c>Location</c> named, without the
/// API key (HttpClient drops the Authorization header on a redirect), and the ledger recorded whatever answered
/// there; a 301 or 302 turned it into a GET. Now the job is dead-lettered naming the redirect and where it
/// pointed, as for a webhook, so the operator corrects the URL.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class GatewayRedirectTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(307)]
    [InlineData(308)]
    public async Task A_charge_redirected_elsewhere_is_not_sent_there_and_the_job_says_where_it_pointed(int status)
    {
        await using var elsewhere = await FakePaymentGateway.StartAsync();
        await using var redirector = RawRedirectReceiver.Start(status, Encoding.ASCII.GetBytes(new Uri(elsewhere.BaseAddress, "charges").AbsoluteUri));
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("PaymentGateway:BaseUrl", redirector.BaseAddress.AbsoluteUri),
            ("PaymentGateway:ApiKey", "worker-token"),
            ("Consumers:ChargePayment:RetryLimit", "0")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-redirect", AmountMinor = 700, Currency = "EUR" };

        await publisher.PublishAsync(payment);

        var job = await fixture.WaitForJobAsync(payment.PaymentId, JobStatus.DeadLettered);
        Assert.Contains($"answered {status}", job.LastError, StringComparison.Ordinal);
        Assert.Contains("not followed", job.LastError, StringComparison.Ordinal);
        Assert.Equal(0, elsewhere.TotalRequests);
        await using var check = fixture.CreateDbContext();
        Assert.False(await check.Ledger.AnyAsync(l => l.PaymentId == payment.PaymentId));
    }
}
