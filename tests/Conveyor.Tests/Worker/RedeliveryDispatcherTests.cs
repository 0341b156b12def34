using System.Text;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The redelivery dispatcher built on its own against the real database and broker, on a clock the
/// test controls, so what it takes for "now" does not depend on how fast the machine is.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class RedeliveryDispatcherTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_row_due_in_less_than_a_millisecond_is_published_without_waiting_for_a_notify()
    {
        var queue = $"dispatcher-test-{Guid.NewGuid():N}";
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);

        // Each reading of the clock is a tenth of a millisecond later than the one before. The row is
        // due half a millisecond after the test's reading, so the dispatcher's first readings find it
        // not due yet and a wait of less than a millisecond; nothing sends a NOTIFY.
        var clock = new SteppingClock(DateTimeOffset.UtcNow, TimeSpan.FromMilliseconds(0.1));
        var messageId = Guid.NewGuid().ToString();
        await using (var db = fixture.CreateDbContext())
        {
            db.ScheduledMessages.Add(new ScheduledMessage
            {
                DedupeKey = messageId,
                Destination = queue,
                DueAt = clock.GetUtcNow().AddMilliseconds(0.5),
                Attempt = 1,
                ContentType = "application/json",
                MessageId = messageId,
                Headers = "{}",
                Body = Encoding.UTF8.GetBytes("{}"),
                CreatedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        await using var publisher = new BrokerPublisher(Options.Create(fixture.RabbitOptions()));
        using var dispatcher = new RedeliveryDispatcher(fixture.DbContextFactory(), publisher,
            Options.Create(new DispatcherOptions()), clock, NullLogger<RedeliveryDispatcher>.Instance);
        await dispatcher.StartAsync(CancellationToken.None);
        try
        {
            await Eventually.AssertAsync(async () =>
            {
                await using var db = fixture.CreateDbContext();
                Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            await dispatcher.StopAsync(CancellationToken.None);
        }

        var copy = await channel.BasicGetAsync(queue, autoAck: true);
        Assert.NotNull(copy);
        Assert.Equal(messageId, copy.BasicProperties.MessageId);
        await channel.QueueDeleteAsync(queue);
    }

    /// <summary>A clock that moves on by <paramref name="step"/> each time it is read.</summary>
    private sealed class SteppingClock(DateTimeOffset start, TimeSpan step) : TimeProvider
    {
        private long _readings;

        public override DateTimeOffset GetUtcNow() => start + (step * Interlocked.Increment(ref _readings));
    }
}
