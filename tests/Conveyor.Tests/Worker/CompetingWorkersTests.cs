using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

[Collection(ThirdLaneCollection.Name)]
public sealed class CompetingWorkersTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Two_workers_on_one_queue_process_a_thousand_jobs_exactly_once_and_share_them()
    {
        const int jobs = 1000;
        await using var gateway = await FakePaymentGateway.StartAsync();
        // A little latency per charge keeps either worker from draining the queue alone.
        gateway.Latency = TimeSpan.FromMilliseconds(5);
        var small = new Dictionary<string, string?> { ["Consumers:ChargePayment:PrefetchCount"] = "16", ["Consumers:ChargePayment:ConcurrentMessageLimit"] = "8" };
        await using var workerA = await fixture.StartWorkerAsync(Merge(WorkerSettings.With(gateway, "worker-a"), small));
        await using var workerB = await fixture.StartWorkerAsync(Merge(WorkerSettings.With(gateway, "worker-b"), small));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        var payments = Enumerable.Range(0, jobs).Select(i => new ChargePayment
        {
            PaymentId = Guid.NewGuid(),
            AccountId = $"acct-{i % 17}",
            AmountMinor = 100 + i,
            Currency = "USD",
        }).ToList();
        foreach (var batch in payments.Chunk(50))
        {
            await Task.WhenAll(batch.Select(p => publisher.PublishAsync(p)));
        }

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(jobs, await db.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
        }, TimeSpan.FromMinutes(3));

        await using var check = fixture.CreateDbContext();
        Assert.Equal(jobs, await check.Ledger.CountAsync());
        Assert.Equal(jobs, gateway.Charges.Count);
        // Nothing fails here: a second request for a payment would be a second run of its message.
        Assert.All(payments, p => Assert.Equal(1, gateway.RequestsFor(p.PaymentId.ToString())));
        var byWorker = gateway.Charges.GroupBy(c => c.Caller).ToDictionary(g => g.Key, g => g.Count());
        Assert.True(byWorker.GetValueOrDefault("Bearer worker-a") > 0, "worker A processed nothing");
        Assert.True(byWorker.GetValueOrDefault("Bearer worker-b") > 0, "worker B processed nothing");
        var ledgerTotal = await check.Ledger.SumAsync(l => l.AmountMinor);
        Assert.Equal(payments.Sum(p => p.AmountMinor), ledgerTotal);
    }

    private static Dictionary<string, string?> Merge(Dictionary<string, string?> a, Dictionary<string, string?> b) =>
        a.Concat(b).ToDictionary(kv => kv.Key, kv => kv.Value);
}
