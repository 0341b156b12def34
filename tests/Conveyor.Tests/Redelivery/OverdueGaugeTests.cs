using System.Diagnostics.Metrics;
using System.Text;
using Conveyor.Storage;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
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
/// And while the table cannot be read: the gauge goes absent once its reading is stale, never frozen.
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
        // Read hourly (the longest period): the ten minutes below fall between two readings.
        using var backlog = new ScheduledBacklog(
            meters, fixture.DbContextFactory(), Options.Create(new DispatcherOptions { BacklogRefreshSeconds = 3_600 }), clock, NullLogger<ScheduledBacklog>.Instance);

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
        // Read hourly (the longest period): the ten minutes below fall between two readings.
        using var backlog = new ScheduledBacklog(
            meters, fixture.DbContextFactory(), Options.Create(new DispatcherOptions { BacklogRefreshSeconds = 3_600 }), clock, NullLogger<ScheduledBacklog>.Instance);
        await ScheduleAsync(TimeSpan.FromMinutes(-5));

        Assert.Equal(HealthStatus.Degraded, (await backlog.CheckHealthAsync(new HealthCheckContext())).Status);
        Assert.InRange(HostMeters.OverdueGauge(meters), 300, 400);

        clock.Advance(TimeSpan.FromMinutes(10));
        Assert.InRange(HostMeters.OverdueGauge(meters), 900, 1000);
    }

    /// <summary>
    /// While the table cannot be read, what the last reading said is not known to hold any longer: counted on, the
    /// gauge fired the overdue alert on one worker cut off from PostgreSQL while the others published every message
    /// on time, or, with nothing scheduled when last read, stayed at 0 through an outage of every worker. Past three
    /// refresh periods the gauges report nothing (the series go stale) and the age of the reading says why.
    /// </summary>
    [Fact]
    public async Task While_the_table_cannot_be_read_the_gauges_go_absent_after_three_periods_and_the_read_age_keeps_growing()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meters = services.GetRequiredService<IMeterFactory>();
        // Stopped: the reading's age is only what the test moves it on by. On the real clock, a second that passed
        // between the reading and the next look (a busy machine) would take the two seconds below past the three
        // periods, and the blip would read as stale.
        var clock = new MovableClock(stopped: true);
        var database = new AwayDatabase(fixture);
        using var backlog = new ScheduledBacklog(
            meters, database, Options.Create(new DispatcherOptions { BacklogRefreshSeconds = 1 }), clock, NullLogger<ScheduledBacklog>.Instance);
        await ScheduleAsync(TimeSpan.FromMinutes(1));
        Assert.Equal(HealthStatus.Healthy, (await backlog.CheckHealthAsync(new HealthCheckContext())).Status);
        Assert.InRange(ReadAge(meters), 0, 1);

        database.Away = true;
        await backlog.StartAsync(CancellationToken.None);
        try
        {
            // One reading missed is a blip: the last one still stands, so an alert's "for" does not start over.
            clock.Advance(TimeSpan.FromSeconds(2));
            Assert.Equal(0, HostMeters.OverdueGauge(meters));

            clock.Advance(TimeSpan.FromMinutes(10));
            Assert.Empty(HostMeters.Observe(meters, JobMetrics.MeterName, ScheduledBacklog.OverdueInstrument));
            Assert.Empty(HostMeters.Observe(meters, JobMetrics.MeterName, ScheduledBacklog.RefusedInstrument));
            Assert.Empty(HostMeters.Observe(meters, JobMetrics.MeterName, ScheduledBacklog.RefusedForInstrument));
            Assert.InRange(ReadAge(meters), 600, 700);
        }
        finally
        {
            await backlog.StopAsync(CancellationToken.None);
        }
    }

    /// <summary>
    /// A real worker whose connections to PostgreSQL are cut: nothing scheduled when it last read the table, so its
    /// gauge said 0, and kept saying it for the whole outage, while nothing could be published. It stops reporting
    /// the gauge, reports how old its reading is, and reports the gauge again once it reads the table.
    /// </summary>
    [Fact]
    public async Task A_worker_cut_off_from_the_database_stops_reporting_how_late_scheduled_messages_are_until_it_reads_them_again()
    {
        var server = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var proxy = await OutageProxy.ToAsync(server.Host!, server.Port);
        var viaProxy = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Host = "127.0.0.1", Port = proxy.Port };
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("ConnectionStrings:Conveyor", viaProxy.ConnectionString),
            ("Redelivery:BacklogRefreshSeconds", "1")));
        var meters = worker.Services.GetRequiredService<IMeterFactory>();
        await Eventually.AssertAsync(() => Assert.Equal(0, HostMeters.OverdueGauge(meters)));

        proxy.Cut();
        var cutOffFor = 0.0;
        try
        {
            await Eventually.AssertAsync(() =>
            {
                Assert.Empty(HostMeters.Observe(meters, JobMetrics.MeterName, ScheduledBacklog.OverdueInstrument));
                cutOffFor = ReadAge(meters);
                Assert.True(cutOffFor >= 3, $"the reading is {cutOffFor} s old");
            });
        }
        finally
        {
            proxy.Restore();
        }

        await Eventually.AssertAsync(() =>
        {
            Assert.Equal(0, HostMeters.OverdueGauge(meters));
            Assert.True(ReadAge(meters) < cutOffFor, $"the reading is still {ReadAge(meters)} s old");
        });
    }

    /// <summary>The gauge <c>conveyor.redelivery.overdue.read_age</c>: seconds since the table was last read.</summary>
    private static double ReadAge(IMeterFactory meters) =>
        Assert.Single(HostMeters.Observe(meters, JobMetrics.MeterName, ScheduledBacklog.ReadAgeInstrument)).Value;

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
