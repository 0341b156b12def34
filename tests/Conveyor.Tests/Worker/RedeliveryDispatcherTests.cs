using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
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
        var messageId = await ScheduleAsync(queue, clock.GetUtcNow().AddMilliseconds(0.5));

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

    [Fact]
    public async Task An_overdue_scheduled_message_marks_the_worker_degraded_until_a_dispatcher_publishes_it()
    {
        var queue = $"dispatcher-test-{Guid.NewGuid():N}";
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
        var settings = WorkerSettings.With();
        settings["Redelivery:DispatcherEnabled"] = "false";
        settings["Redelivery:BacklogRefreshSeconds"] = "1";
        await using var stalled = await fixture.StartWorkerAsync(settings);

        var (status, entry) = await ReadinessAsync(stalled);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("Healthy", entry.GetProperty("status").GetString());

        // A row due later is not a problem; one due ten minutes ago is.
        await ScheduleAsync(queue, DateTimeOffset.UtcNow.AddHours(1));
        Assert.Equal("Healthy", (await ReadinessAsync(stalled)).Entry.GetProperty("status").GetString());
        var overdueId = await ScheduleAsync(queue, DateTimeOffset.UtcNow.AddMinutes(-10));
        (status, entry) = await ReadinessAsync(stalled);
        Assert.Equal(HttpStatusCode.OK, status); // Degraded: the worker stays in service
        Assert.Equal("Degraded", entry.GetProperty("status").GetString());
        Assert.Contains("overdue", entry.GetProperty("description").GetString(), StringComparison.Ordinal);
        await Eventually.AssertAsync(async () => Assert.InRange(await OverdueGaugeAsync(stalled), 9 * 60, 60 * 60));

        await using var dispatching = await fixture.StartWorkerAsync(WorkerSettings.With());
        await Eventually.AssertAsync(async () =>
            Assert.Equal("Healthy", (await ReadinessAsync(stalled)).Entry.GetProperty("status").GetString()));
        await Eventually.AssertAsync(async () => Assert.Equal(0, await OverdueGaugeAsync(stalled)));
        var copy = await channel.BasicGetAsync(queue, autoAck: true);
        Assert.NotNull(copy);
        Assert.Equal(overdueId, copy.BasicProperties.MessageId);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.ScheduledMessages.CountAsync()); // the one due later
        }

        await channel.QueueDeleteAsync(queue);
    }

    private async Task<string> ScheduleAsync(string queue, DateTimeOffset dueAt)
    {
        var messageId = Guid.NewGuid().ToString();
        await using var db = fixture.CreateDbContext();
        db.ScheduledMessages.Add(new ScheduledMessage
        {
            DedupeKey = messageId,
            Destination = queue,
            DueAt = dueAt,
            Attempt = 1,
            ContentType = "application/json",
            MessageId = messageId,
            Headers = "{}",
            Body = Encoding.UTF8.GetBytes("{}"),
            CreatedAt = DateTimeOffset.UtcNow,
        });
        await db.SaveChangesAsync();
        return messageId;
    }

    /// <summary>The worker's readiness status code and its <c>scheduled-messages</c> entry.</summary>
    private static async Task<(HttpStatusCode Status, JsonElement Entry)> ReadinessAsync(RunningApp worker)
    {
        using var response = await worker.Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
        var report = await response.Content.ReadFromJsonAsync<JsonElement>();
        return (response.StatusCode, report.GetProperty("checks").GetProperty(ScheduledBacklog.HealthCheckName).Clone());
    }

    /// <summary>The worker's <c>conveyor.redelivery.overdue</c> gauge as scraped from <c>/metrics</c>.</summary>
    private static async Task<double> OverdueGaugeAsync(RunningApp worker)
    {
        const string name = "conveyor_redelivery_overdue_seconds";
        var exposition = await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        var line = exposition.Split('\n').FirstOrDefault(l => l.StartsWith(name + "{", StringComparison.Ordinal) || l.StartsWith(name + " ", StringComparison.Ordinal));
        Assert.NotNull(line);
        var value = line[(line.LastIndexOf('}') is var brace and >= 0 ? brace + 1 : name.Length)..].Trim().Split(' ')[0];
        return double.Parse(value, CultureInfo.InvariantCulture);
    }

    /// <summary>A clock that moves on by <paramref name="step"/> each time it is read.</summary>
    private sealed class SteppingClock(DateTimeOffset start, TimeSpan step) : TimeProvider
    {
        private long _readings;

        public override DateTimeOffset GetUtcNow() => start + (step * Interlocked.Increment(ref _readings));
    }
}
