using System.Text;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using RabbitMQ.Client;

namespace Conveyor.Tests.Api;

/// <summary>
/// Stranded jobs of one kind that cannot be published (no queue takes the kind's commands: it was deleted, or no
/// worker that consumes it has started) must not keep the other kinds' stranded jobs from being published again.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class StrandedJobKindsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ChargeExchange = "Conveyor.Contracts.Payments:ChargePayment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_kind_no_queue_takes_does_not_keep_the_stranded_jobs_of_another_kind_from_being_published()
    {
        // A vhost where only the charges' exchange has a queue: a report's command is returned by the broker.
        await using var scratch = await fixture.ScratchVhostAsync("stranded-kinds");
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:VirtualHost"] = scratch.Name,
            ["Jobs:StrandedAfterSeconds"] = "60",
            // The test drives the checks itself.
            ["Jobs:StrandedCheckSeconds"] = "3600",
        });
        await using var connection = await fixture.AmqpFactory(scratch.Name).CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync();
        await channel.ExchangeDeclareAsync(ChargeExchange, ExchangeType.Fanout, durable: true, autoDelete: false);
        var probe = (await channel.QueueDeclareAsync()).QueueName;
        await channel.QueueBindAsync(probe, ChargeExchange, routingKey: "");

        // More unpublishable reports than one claim takes, all older than the charge.
        var older = DateTimeOffset.UtcNow.AddMinutes(-10);
        var reports = Enumerable.Range(0, StrandedJobRepublisher.BatchSize).Select(_ =>
        {
            var job = Job(JobKinds.GenerateReport, older);
            job.RequestBody = Encoding.UTF8.GetBytes(JobRequests.GenerateReport(Guid.Parse(job.BusinessKey)));
            return job;
        }).ToList();
        var charge = Job(JobKinds.ChargePayment, DateTimeOffset.UtcNow.AddMinutes(-5));
        charge.RequestBody = Encoding.UTF8.GetBytes(JobRequests.ChargePayment(Guid.Parse(charge.BusinessKey)));
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(reports);
            db.Jobs.Add(charge);
            await db.SaveChangesAsync();
        }

        var monitor = api.Services.GetRequiredService<StrandedJobsMonitor>();
        await monitor.RefreshAsync(CancellationToken.None);

        var copy = await channel.BasicGetAsync(probe, autoAck: true);
        Assert.NotNull(copy);
        Assert.Equal(charge.Id.ToString(), Encoding.UTF8.GetString((byte[])copy.BasicProperties.Headers![JobHeaders.JobId]!));
        Assert.Equal(0, monitor.Stranded[JobKinds.ChargePayment]);
        // The reports are handed back as they were: still stranded, counted for an operator.
        Assert.Equal(reports.Count, monitor.Stranded[JobKinds.GenerateReport]);
        await using var check = fixture.CreateDbContext();
        Assert.Equal(reports.Count, await check.Jobs.CountAsync(j => j.Kind == JobKinds.GenerateReport && j.UpdatedAt < older.AddSeconds(1)));
    }

    private static Job Job(string kind, DateTimeOffset updatedAt) => new()
    {
        Id = Guid.CreateVersion7(),
        Kind = kind,
        BusinessKey = Guid.NewGuid().ToString("D"),
        Status = JobStatus.Queued,
        RequestHash = "submitted through the Api",
        CreatedAt = updatedAt,
        UpdatedAt = updatedAt,
    };
}
