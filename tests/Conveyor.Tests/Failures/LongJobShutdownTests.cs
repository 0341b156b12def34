using System.Text;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using RabbitMQ.Client;

namespace Conveyor.Tests.Failures;

[Collection(ConveyorCollection.Name)]
public sealed class LongJobShutdownTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string FaultExchange = "MassTransit:Fault--Conveyor.Contracts.Reports:GenerateReport--";
    private const string FaultSubscriber = "generate-report-fault-subscriber";

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-fault-subscriber");
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeleteAsync(FaultSubscriber);
    }

    [Fact]
    public async Task A_report_interrupted_by_a_graceful_shutdown_completes_once_after_restart()
    {
        const int ledgerRows = 60;
        await fixture.SeedLedgerAsync("acct-long", ledgerRows);

        var settings = WorkerSettings.With();
        settings["Reports:PageDelayMilliseconds"] = "250";
        settings["Shutdown:ConsumerStopTimeoutSeconds"] = "1";
        settings["Shutdown:BusStopTimeoutSeconds"] = "5";
        settings["Shutdown:HostShutdownTimeoutSeconds"] = "10";
        // A subscriber of Fault<GenerateReport>: an attempt cut short by a shutdown runs again, so it is no fault.
        await using (var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-fault-subscriber"))
        await using (var channel = await connection.CreateChannelAsync())
        {
            await channel.ExchangeDeclareAsync(FaultExchange, ExchangeType.Fanout, durable: true);
            await channel.QueueDeclareAsync(FaultSubscriber, durable: false, exclusive: false, autoDelete: false);
            await channel.QueueBindAsync(FaultSubscriber, FaultExchange, string.Empty);
        }

        var first = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-long", PageSize = 5 };
        var key = report.ReportId.ToString();

        await publisher.PublishAsync(report);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == key);
            Assert.Equal(JobStatus.Running, job.Status);
            Assert.True(job.Progress > 0, "no progress yet");
        });

        // As on SIGTERM: the host stops, the consumer's token fires after the consumer stop timeout.
        await first.DisposeAsync();

        await using (var db = fixture.CreateDbContext())
        {
            Assert.False(await db.Reports.AnyAsync(r => r.ReportId == report.ReportId), "an interrupted report was stored");
            Assert.False(await db.Inbox.AnyAsync(i => i.MessageKey == key), "the lease was not released");
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == key);
            Assert.Equal(JobStatus.Queued, job.Status);
            Assert.Contains("shutdown", job.LastError, StringComparison.OrdinalIgnoreCase);
        }

        // The broker has the message back, neither acked nor dead-lettered.
        await Eventually.AssertAsync(async () =>
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(fixture.VirtualHost, "generate-report"))?.Messages));
        Assert.Equal(0u, await fixture.ReadyAsync(FaultSubscriber));

        // Queued again, but started: the cut attempt may have had effects outside, so no cancel.
        await using (var api = await fixture.StartApiAsync())
        {
            await using var db = fixture.CreateDbContext();
            var jobId = (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Id;
            using var cancel = await api.Client.CancelJobAsync(jobId);
            await cancel.AssertProblemAsync(StatusCodes.Status409Conflict);
        }

        settings["Reports:PageDelayMilliseconds"] = "0";
        await using var second = await fixture.StartWorkerAsync(settings);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.SingleAsync(j => j.BusinessKey == key);
            Assert.Equal(JobStatus.Succeeded, job.Status);
            Assert.Equal(100, job.Progress);
            Assert.Equal(2, job.Attempts);
        });
        await using var check = fixture.CreateDbContext();
        var stored = await check.Reports.SingleAsync(r => r.ReportId == report.ReportId);
        Assert.Equal(ledgerRows, stored.RowsScanned);
        Assert.Equal("done", (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
        Assert.Equal(0u, await fixture.ReadyAsync(FaultSubscriber));

        // The control: a report refused for good does publish a Fault<GenerateReport>, and the same
        // subscriber receives it. Without it, a subscriber bound where no fault ever goes (a misnamed
        // exchange, faults not published at all) would have passed both checks of 0 above.
        var refused = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = "acct-long", PageSize = 0 };
        await publisher.PublishAsync(refused);
        await fixture.WaitForJobAsync(refused.ReportId, JobStatus.DeadLettered);
        await Eventually.AssertAsync(async () => Assert.Equal(1u, await fixture.ReadyAsync(FaultSubscriber)));
        await using var amqp = await RawAmqpProducer.ConnectAsync(fixture);
        var fault = Assert.Single(await amqp.TakeAllAsync(FaultSubscriber));
        var faultBody = Encoding.UTF8.GetString(fault.Body);
        Assert.Contains(refused.ReportId.ToString(), faultBody, StringComparison.Ordinal);
        Assert.DoesNotContain(key, faultBody, StringComparison.Ordinal);
    }
}
