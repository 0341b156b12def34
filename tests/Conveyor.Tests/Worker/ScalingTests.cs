using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Faults;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// Scaling out is adding worker processes (pods): 1, 2, then 3 separate <c>Conveyor.Worker</c>
/// processes on one queue, each job once, every process busy.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ScalingTests(ConveyorFixture fixture)
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public async Task Workers_added_to_one_queue_share_a_few_thousand_jobs_and_apply_each_once(int workers)
    {
        const int jobs = 2000;
        await fixture.ResetAsync();
        await using var gateway = await FakePaymentGateway.StartAsync();
        // A little latency per charge, so that the work takes long enough to be shared.
        gateway.Latency = TimeSpan.FromMilliseconds(20);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var processes = new List<ServiceProcess>();
        try
        {
            for (var i = 0; i < workers; i++)
            {
                var settings = new Dictionary<string, string?>(fixture.BaseSettings);
                foreach (var (key, value) in WorkerSettings.With(gateway, $"worker-{i}"))
                {
                    settings[key] = value;
                }

                // A charge that outlives the tests' 5 s gateway timeout is tried again (the same key, so one charge),
                // and its second request would read here as a second run of its message. This test process, which
                // hosts the gateway, can stall that long on a machine busy with more than this suite (a run beside a
                // benchmark saw 8 consecutive charges asked twice, as many as two workers hold in flight, and one
                // charge and ledger row each): 60 s, so only a message run twice makes a second request.
                settings["PaymentGateway:TimeoutSeconds"] = "60";
                settings["Consumers:ChargePayment:PrefetchCount"] = "8";
                settings["Consumers:ChargePayment:ConcurrentMessageLimit"] = "4";
                processes.Add(await ServiceProcess.StartWorkerAsync(settings));
            }

            // Every process consumes before the first job is published: the broker hands the jobs out
            // among them, however long each took to start.
            await Eventually.AssertAsync(async () => Assert.Equal((uint)workers, await fixture.ConsumersAsync("charge-payment")));
            var payments = Enumerable.Range(0, jobs).Select(i => new ChargePayment
            {
                PaymentId = Guid.NewGuid(),
                AccountId = $"acct-scale-{i % 11}",
                AmountMinor = 1 + i,
                Currency = "EUR",
            }).ToList();
            foreach (var batch in payments.Chunk(100))
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
            var shares = gateway.Charges.GroupBy(c => c.Caller).ToDictionary(g => g.Key, g => g.Count());
            for (var i = 0; i < workers; i++)
            {
                Assert.True(shares.GetValueOrDefault($"Bearer worker-{i}") > 0, $"worker process {i} of {workers} processed nothing");
            }
        }
        finally
        {
            foreach (var process in processes)
            {
                await process.DisposeAsync();
            }
        }
    }
}
