using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Redelivery;

/// <summary>
/// The backlog reading behind the worker's <c>scheduled-messages</c> health check and gauges (every
/// refresh, every probe) counts the refused messages in their partial index, not by reading the whole
/// table, also while its statistics say nothing (never analysed: a new deployment, an outage's
/// backlog that grew faster than autovacuum). A database of the test's own, so that its counters
/// count only the reading.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ScheduledBacklogPlanTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "backlog")
{
    [Fact]
    public async Task A_backlog_of_scheduled_messages_is_not_read_to_count_the_few_refused_ones()
    {
        await Database.MigrateAsync();

        // 25,000 redeliveries due in an hour, 3 of them refused by the broker; never analysed.
        await Database.ExecuteAsync("""
            ALTER TABLE scheduled_messages SET (autovacuum_enabled = false);
            INSERT INTO scheduled_messages (dedupe_key, destination, due_at, attempt, headers, body, created_at, first_refused_at)
            SELECT 'm' || g, 'charge-payment', now() + interval '1 hour', 1, '{}', '\x00', now(),
                   CASE WHEN g <= 3 THEN now() - interval '2 minutes' END
              FROM generate_series(1, 25000) AS g;
            """);
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var backlog = new ScheduledBacklog(services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), Database.DbContextFactory(),
            Options.Create(new DispatcherOptions()), TimeProvider.System, NullLogger<ScheduledBacklog>.Instance);
        var before = await Database.RowsReadAsync("scheduled_messages");

        var health = await backlog.CheckHealthAsync(new HealthCheckContext());

        var read = await Database.RowsReadAsync("scheduled_messages") - before;
        Assert.Contains("the broker has refused 3 of them", health.Description, StringComparison.Ordinal);
        Assert.True(read < 100, $"the reading read {read} rows of scheduled_messages");
    }
}
