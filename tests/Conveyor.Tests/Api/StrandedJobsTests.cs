using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using RabbitMQ.Client;

namespace Conveyor.Tests.Api;

/// <summary>
/// Jobs whose command was most likely never published (ADR 0006) are counted: still <c>queued</c>
/// past the threshold while their queue holds no message. A backlog is not stranded.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class StrandedJobsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Jobs:StrandedAfterSeconds"] = "60",
            // The test drives the checks itself.
            ["Jobs:StrandedCheckSeconds"] = "3600",
        });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Old_queued_jobs_of_an_empty_queue_are_stranded_and_those_of_a_backlog_are_not()
    {
        var old = DateTimeOffset.UtcNow.AddMinutes(-5);
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(
                Job(JobKinds.ChargePayment, JobStatus.Queued, old),
                Job(JobKinds.ChargePayment, JobStatus.Queued, old),
                Job(JobKinds.ChargePayment, JobStatus.Queued, DateTimeOffset.UtcNow), // within its publish time
                Job(JobKinds.ChargePayment, JobStatus.Succeeded, old),
                Job(JobKinds.ChargePayment, JobStatus.Running, old),
                Job(JobKinds.DeliverWebhook, JobStatus.Queued, old)); // its queue holds a message: a backlog
            await db.SaveChangesAsync();
        }

        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        // Declared as the worker declares it, so that the tests after this one find the queue they expect.
        await channel.QueueDeclareAsync(JobKinds.DeliverWebhook, durable: true, exclusive: false, autoDelete: false,
            new RabbitMqOptions().JobQueueArguments());
        await channel.BasicPublishAsync(string.Empty, JobKinds.DeliverWebhook, mandatory: true, new BasicProperties { Persistent = true }, "{}"u8.ToArray());

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        await Eventually.AssertAsync(async () =>
        {
            // The management API's statistics take a few seconds to show the new message.
            await monitor.RefreshAsync(CancellationToken.None);
            Assert.Equal(2, monitor.Stranded[JobKinds.ChargePayment]);
            Assert.Equal(0, monitor.Stranded[JobKinds.DeliverWebhook]);
            Assert.Equal(0, monitor.Stranded[JobKinds.GenerateReport]);
        });

        var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Contains(metrics.Split('\n'), line => line.StartsWith("conveyor_jobs_stranded{", StringComparison.Ordinal)
            && line.Contains("kind=\"charge-payment\"", StringComparison.Ordinal) && line.Split(' ')[1] == "2");

        // Once its queue is empty, the webhook job is stranded too.
        await channel.QueuePurgeAsync(JobKinds.DeliverWebhook);

        await Eventually.AssertAsync(async () =>
        {
            await monitor.RefreshAsync(CancellationToken.None);
            Assert.Equal(1, monitor.Stranded[JobKinds.DeliverWebhook]);
        });
    }

    private static Job Job(string kind, string status, DateTimeOffset updatedAt) => new()
    {
        Id = Guid.CreateVersion7(),
        Kind = kind,
        BusinessKey = Guid.NewGuid().ToString("D"),
        Status = status,
        CreatedAt = updatedAt,
        UpdatedAt = updatedAt,
    };
}
