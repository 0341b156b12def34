using System.Diagnostics.Metrics;
using System.Text;
using Conveyor.Storage;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Tests.Redelivery;

/// <summary>
/// The <c>conveyor.redelivery.overdue</c> gauge between two readings of the table (every
/// <c>BacklogRefreshSeconds</c>, up to an hour): a message that was not yet due when the table was read
/// may have been published on time since, so it is not counted overdue until a reading says it still waits.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class OverdueGaugeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_message_due_after_the_last_reading_is_not_reported_overdue_before_the_next_one()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meters = services.GetRequiredService<IMeterFactory>();
        var clock = new MovableClock();
        using var backlog = new ScheduledBacklog(meters, fixture.DbContextFactory(), Options.Create(new DispatcherOptions()), clock, NullLogger<ScheduledBacklog>.Instance);

        // Due in a minute when the table is read: nothing is overdue.
        await ScheduleAsync(TimeSpan.FromMinutes(1));

        Assert.Equal(HealthStatus.Healthy, (await backlog.CheckHealthAsync(new HealthCheckContext())).Status);
        Assert.Equal(0, HostMeters.OverdueGauge(meters));

        // Published on time by a dispatcher; ten minutes on, the gauge has not read the table again.
        await using (var db = fixture.CreateDbContext())
        {
            await db.ScheduledMessages.ExecuteDeleteAsync();
        }

        clock.Advance(TimeSpan.FromMinutes(10));
        Assert.Equal(0, HostMeters.OverdueGauge(meters));

        // The next reading: still nothing overdue.
        Assert.Equal(HealthStatus.Healthy, (await backlog.CheckHealthAsync(new HealthCheckContext())).Status);
        Assert.Equal(0, HostMeters.OverdueGauge(meters));
    }

    [Fact]
    public async Task A_message_already_overdue_at_the_last_reading_stays_overdue_and_grows_until_the_next_one()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meters = services.GetRequiredService<IMeterFactory>();
        var clock = new MovableClock();
        using var backlog = new ScheduledBacklog(meters, fixture.DbContextFactory(), Options.Create(new DispatcherOptions()), clock, NullLogger<ScheduledBacklog>.Instance);
        await ScheduleAsync(TimeSpan.FromMinutes(-5));

        Assert.Equal(HealthStatus.Degraded, (await backlog.CheckHealthAsync(new HealthCheckContext())).Status);
        Assert.InRange(HostMeters.OverdueGauge(meters), 300, 400);

        clock.Advance(TimeSpan.FromMinutes(10));
        Assert.InRange(HostMeters.OverdueGauge(meters), 900, 1000);
    }

    [Fact]
    public async Task While_the_table_cannot_be_read_a_message_due_after_the_last_reading_counts_overdue_from_its_due_time()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meters = services.GetRequiredService<IMeterFactory>();
        var clock = new MovableClock();
        var database = new AwayDatabase(fixture);
        using var backlog = new ScheduledBacklog(
            meters, database, Options.Create(new DispatcherOptions { BacklogRefreshSeconds = 1 }), clock, NullLogger<ScheduledBacklog>.Instance);
        await ScheduleAsync(TimeSpan.FromMinutes(1));
        Assert.Equal(HealthStatus.Healthy, (await backlog.CheckHealthAsync(new HealthCheckContext())).Status);

        // PostgreSQL is away: no dispatcher can claim the message either, so it is late from its due time on.
        database.Away = true;
        await backlog.StartAsync(CancellationToken.None);
        try
        {
            clock.Advance(TimeSpan.FromMinutes(10));
            await Eventually.AssertAsync(() =>
            {
                Assert.InRange(HostMeters.OverdueGauge(meters), 500, 600);
                return Task.CompletedTask;
            });
        }
        finally
        {
            await backlog.StopAsync(CancellationToken.None);
        }
    }

    private async Task ScheduleAsync(TimeSpan dueIn)
    {
        await using var db = fixture.CreateDbContext();
        var now = await db.Database.SqlQuery<DateTimeOffset>($"SELECT clock_timestamp() AS \"Value\"").SingleAsync();
        db.ScheduledMessages.Add(new ScheduledMessage
        {
            DedupeKey = Guid.NewGuid().ToString(),
            Destination = "overdue-gauge-test",
            DueAt = now + dueIn,
            Attempt = 1,
            Headers = "{}",
            Body = Encoding.UTF8.GetBytes("{}"),
            CreatedAt = now,
        });
        await db.SaveChangesAsync();
    }

    /// <summary>The tests' database, until <see cref="Away"/>: then every context fails to open, as with PostgreSQL out of reach.</summary>
    private sealed class AwayDatabase(ConveyorFixture fixture) : IDbContextFactory<ConveyorDbContext>
    {
        public volatile bool Away;

        public ConveyorDbContext CreateDbContext() => Away ? throw new NpgsqlException("the database is away") : fixture.CreateDbContext();
    }
}
