using System.Net;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Tests.Observability;
using Microsoft.EntityFrameworkCore;
using Xunit.Abstractions;

namespace Conveyor.Tests.Faults;

/// <summary>
/// Two workers, each with its redelivery dispatcher, share the stored redeliveries of a flaky gateway.
/// The workers run as processes of their own: the dispatcher's counter is a static instrument, which
/// workers in one process would share, so only each process's own /metrics tells the dispatchers apart.
/// </summary>
[Collection(SecondLaneCollection.Name)]
[Trait("Category", "Faults")]
public sealed class CompetingRedeliveryTests(ConveyorFixture fixture, ITestOutputHelper output) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Two_workers_and_their_dispatchers_redeliver_a_flaky_gateways_failures_and_every_job_succeeds_exactly_once()
    {
        var jobs = FaultReport.Jobs(normalRun: 1_000);
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.Latency = TimeSpan.FromMilliseconds(2);
        var failing = 1;
        var injected = 0;
        // While failing: about a third of the requests answer 503 (the answer is decided per request).
        gateway.OnRequest = () =>
        {
            if (Volatile.Read(ref failing) == 1 && Random.Shared.NextDouble() < 0.3)
            {
                Interlocked.Increment(ref injected);
                gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
            }
        };

        await using var workerA = await ServiceProcess.StartWorkerAsync(Settings(gateway, "worker-a"));
        await using var workerB = await ServiceProcess.StartWorkerAsync(Settings(gateway, "worker-b"));
        await using var api = await fixture.StartApiAsync(FaultReport.ApiSettings);
        // Declared now, as MassTransit would on the first dead-letter, so that "nothing in it" is a count.
        await fixture.DeclareAsync("charge-payment_error");

        var submissions = new JobSubmissions();
        await submissions.SubmitAsync(api.Client, jobs, clients: 16);
        // Redeliveries keep going through the dispatchers while more than half the work is left.
        await Eventually.AssertAsync(async () => Assert.True(await LedgerCountAsync() >= jobs / 2), TimeSpan.FromMinutes(2));
        Volatile.Write(ref failing, 0);

        var audit = await PaymentAudit.SettleAsync(fixture, gateway, submissions.Accepted, TimeSpan.FromMinutes(3));
        await using var db = fixture.CreateDbContext();
        var leftScheduled = await db.ScheduledMessages.CountAsync();
        var deadLetters = await fixture.ReadyAsync("charge-payment_error");
        var byWorker = gateway.Charges.GroupBy(c => c.Caller).ToDictionary(g => g.Key, g => g.Count());
        var (publishedA, publishedB) = (await PublishedAsync(workerA), await PublishedAsync(workerB));
        FaultReport.Write(output, "two workers + dispatchers, gateway failing 30% with 503", audit,
            $"{injected} injected 503s, each stored and redelivered by one of two dispatchers (published by dispatcher A/B {publishedA}/{publishedB}); charges by worker A/B {byWorker.GetValueOrDefault("Bearer worker-a")}/{byWorker.GetValueOrDefault("Bearer worker-b")}; {audit.DeadLettered} dead-lettered, {leftScheduled} left scheduled, {deadLetters} in charge-payment_error");

        Assert.Equal(jobs, submissions.AcceptedCount);
        Assert.True(injected > 0, "no failure was injected");
        Assert.Equal(0, audit.Lost);
        Assert.Equal(0, audit.AppliedTwice);
        Assert.Equal(0, audit.DeadLettered);
        Assert.Equal(audit.Accepted, gateway.Charges.Count);
        // Nothing is killed here: a copy redelivered by both dispatchers must not run again once charged.
        Assert.Equal(0, audit.ChargedAgain);
        Assert.True(byWorker.GetValueOrDefault("Bearer worker-a") > 0 && byWorker.GetValueOrDefault("Bearer worker-b") > 0, "one worker did all the work");
        // Both dispatchers took due rows from the shared table: the one redelivery path is not another's alone.
        Assert.True(publishedA > 0 && publishedB > 0, $"one dispatcher published every redelivery (A {publishedA}, B {publishedB})");
        Assert.Equal(0, leftScheduled);
        Assert.Equal(0u, deadLetters);
    }

    /// <summary>A worker's <c>conveyor_redelivery_published_total</c>: the scheduled messages its own dispatcher published.</summary>
    private static async Task<double> PublishedAsync(ServiceProcess worker)
    {
        using var http = new HttpClient { BaseAddress = worker.BaseAddress };
        return PrometheusText.Sum(await http.GetStringAsync(new Uri("/metrics", UriKind.Relative)), "conveyor_redelivery_published_total");
    }

    /// <summary>Every failure goes straight to a delayed redelivery (no in-memory retry), short delays, kill switch off.</summary>
    private Dictionary<string, string?> Settings(FakePaymentGateway gateway, string caller)
    {
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in WorkerSettings.With(gateway, caller))
        {
            settings[key] = value;
        }

        settings["Consumers:ChargePayment:PrefetchCount"] = "16";
        settings["Consumers:ChargePayment:ConcurrentMessageLimit"] = "8";
        settings["Consumers:ChargePayment:RetryLimit"] = "0";
        settings["Consumers:ChargePayment:RedeliveryLimit"] = "25";
        settings["Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds"] = "200";
        settings["Consumers:ChargePayment:RedeliveryFactor"] = "1.5";
        settings["Consumers:ChargePayment:RedeliveryMaxDelayMilliseconds"] = "2000";
        settings["Consumers:ChargePayment:KillSwitchTripPercent"] = "0";
        return settings;
    }

    private async Task<int> LedgerCountAsync()
    {
        await using var db = fixture.CreateDbContext();
        return await db.Ledger.CountAsync();
    }
}
