using System.Text;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Conveyor.Tests.Redelivery;

/// <summary>
/// A stored command the broker refused (its queue was missing) gets a later due time at every try, so
/// its lateness, once it is published, counts from its first refusal, as the backlog's overdue gauge
/// counts it: from the due time of its last try, it read as a second late however long it waited.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class RefusedLatenessTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private readonly string _queue = $"refused-lateness-{Guid.NewGuid():N}";

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeleteAsync(_queue);
    }

    [Fact]
    public async Task A_command_refused_for_ten_minutes_is_published_ten_minutes_late_not_one_second()
    {
        // As the dispatcher leaves a row it has tried every second for ten minutes: due at its next try
        // (a second ago), first refused ten minutes ago. Its queue is back now.
        DateTimeOffset now;
        await using (var db = fixture.CreateDbContext())
        {
            now = await db.Database.SqlQuery<DateTimeOffset>($"SELECT clock_timestamp() AS \"Value\"").SingleAsync();
            var messageId = Guid.NewGuid().ToString();
            db.ScheduledMessages.Add(new ScheduledMessage
            {
                DedupeKey = messageId,
                Destination = _queue,
                DueAt = now.AddSeconds(-1),
                Attempt = 1,
                ContentType = "application/json",
                MessageId = messageId,
                Headers = "{}",
                Body = Encoding.UTF8.GetBytes("{}"),
                CreatedAt = now.AddMinutes(-10),
                FirstRefusedAt = now.AddMinutes(-10),
                Refusal = "NO_ROUTE",
            });
            await db.SaveChangesAsync();
        }

        await fixture.DeclareAsync(_queue);
        var metrics = HostMeters.OwnJobMetrics();
        using var recorded = WorkerMetric.Lateness();
        recorded.Watch(metrics);

        await using var publisher = new BrokerPublisher(Options.Create(fixture.RabbitOptions()));
        using var dispatcher = new RedeliveryDispatcher(
            fixture.DbContextFactory(), publisher, Options.Create(new DispatcherOptions()), metrics, TimeProvider.System, NullLogger<RedeliveryDispatcher>.Instance);

        Assert.Equal(1, await dispatcher.DispatchDueAsync(CancellationToken.None));

        Assert.Equal(1u, await fixture.ReadyAsync(_queue));
        var lateness = Assert.Single(recorded.Recorded).Value;
        Assert.True(lateness >= 600, $"the command waited ten minutes since its first refusal, yet its lateness reads {lateness:F1} s");
    }
}
