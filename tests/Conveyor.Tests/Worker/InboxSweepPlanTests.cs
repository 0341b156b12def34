using System.Text.Json;
using Conveyor.Storage.Inbox;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Retention;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The retention sweep reads the inbox along its <c>received_at</c> index, a batch at a time, whatever
/// the planner believes of the table (ADR 0010): never analysed (a new deployment, an inbox that grew
/// faster than autovacuum analysed it), or analysed while every row was past the window (a backlog
/// since swept). Under either, the sweep's statement read the whole inbox sequentially to find the
/// few rows past the window, at every sweep of every worker. A database of the test's own, so that
/// its counters count only the sweep and its statistics stay as the test left them.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxSweepPlanTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "sweep")
{
    /// <summary>
    /// Handled messages within the window: enough that reading them is the costlier plan even by the
    /// planner's guess for a table never analysed (about a sixteenth of its rows, from the widths of its
    /// columns). Below some 250,000 rows that guess makes reading the whole small table and sorting it
    /// the cheaper plan, each batch reading at most that much.
    /// </summary>
    private const int Recent = 400_000;
    private static readonly RetentionOptions Retention = new();

    /// <summary>How the plan may touch the inbox: the index range, each row by its ctid, the DELETE itself.</summary>
    private static readonly string[] InboxReads = ["Index Scan", "Tid Scan", "ModifyTable"];

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task The_inbox_sweep_reads_a_batch_through_the_received_at_index_whatever_the_statistics_say(bool analysedWhenEveryRowWasOld)
    {
        await Database.MigrateAsync();
        var now = DateTimeOffset.UtcNow;
        var before = now.AddHours(-Retention.InboxHours);
        await Database.ExecuteAsync("ALTER TABLE inbox SET (autovacuum_enabled = false)");
        if (analysedWhenEveryRowWasOld)
        {
            // Statistics taken during a backlog of old rows, which a sweep has deleted since: they say
            // every row is past the window.
            await Database.ExecuteAsync($"""
                INSERT INTO inbox (consumer_id, message_key, received_at, status)
                SELECT 'charge-payment', 'backlog-' || g, now() - interval '30 days' + g * interval '1 second', '{InboxStatus.Done}'
                  FROM generate_series(1, 10000) AS g;
                ANALYZE inbox;
                DELETE FROM inbox;
                """);
            // On its own: VACUUM runs in no transaction, nor beside other statements.
            await Database.ExecuteAsync("VACUUM inbox");
        }

        // A day of handled messages, none past the window, and a few rows that are: three handled,
        // a lease lapsed long ago (its worker died), a lease still renewed and one lapsed an hour ago.
        await Database.ExecuteAsync($"""
            INSERT INTO inbox (consumer_id, message_key, received_at, status)
            SELECT 'charge-payment', 'recent-' || g, now() - interval '1 day' + g * interval '100 milliseconds', '{InboxStatus.Done}'
              FROM generate_series(1, {Recent}) AS g;
            INSERT INTO inbox (consumer_id, message_key, received_at, status, lease_owner, lease_expires_at)
            VALUES ('charge-payment', 'old-done-1', now() - interval '40 days', '{InboxStatus.Done}', NULL, NULL),
                   ('charge-payment', 'old-done-2', now() - interval '40 days', '{InboxStatus.Done}', NULL, NULL),
                   ('charge-payment', 'old-done-3', now() - interval '40 days', '{InboxStatus.Done}', NULL, NULL),
                   ('generate-report', 'old-lapsed', now() - interval '40 days', '{InboxStatus.Processing}', 'dead-worker', now() - interval '39 days'),
                   ('generate-report', 'old-live', now() - interval '40 days', '{InboxStatus.Processing}', 'live-worker', now() + interval '1 minute'),
                   ('generate-report', 'old-lapsed-lately', now() - interval '40 days', '{InboxStatus.Processing}', 'late-worker', now() - interval '1 hour');
            """);

        // One ordered range of the index, stopped by the batch's LIMIT; each row then by its ctid. Before:
        // a sequential scan of the inbox, filtered.
        var plan = await PlanAsync(before);
        Assert.Contains(plan, node => node is { Type: "Index Scan", Relation: "inbox", Index: "ix_inbox_received_at" });
        Assert.All(plan.Where(node => node.Relation == "inbox"), node => Assert.Contains(node.Type, InboxReads));
        Assert.DoesNotContain(plan, node => node.Type is "Sort" or "Incremental Sort" or "Hash Join" or "Merge Join");

        var sweeper = new RetentionSweeper(Database.DbContextFactory(), Options.Create(Retention), HostMeters.OwnJobMetrics(), TimeProvider.System, NullLogger<RetentionSweeper>.Instance);
        var readBefore = await Database.RowsReadAsync("inbox");

        var swept = await sweeper.SweepAsync(now, CancellationToken.None);

        var read = await Database.RowsReadAsync("inbox") - readBefore;
        Assert.Equal(4, swept.InboxRows);
        await using var check = Database.CreateDbContext();
        Assert.Equal(["old-lapsed-lately", "old-live"],
            await check.Inbox.Where(i => i.MessageKey.StartsWith("old-")).Select(i => i.MessageKey).OrderBy(k => k).ToListAsync());
        Assert.Equal(Recent, await check.Inbox.CountAsync(i => i.MessageKey.StartsWith("recent-")));
        // The rows past the window and about a batch of those received since; before, the whole inbox.
        Assert.True(read < 2 * Retention.BatchSize, $"the sweep read {read} inbox rows");
    }

    /// <summary>The nodes of the plan the sweep's statement gets for its first batch, as PostgreSQL explains it.</summary>
    private async Task<List<PlanNode>> PlanAsync(DateTimeOffset before)
    {
        await using var connection = new NpgsqlConnection(Database.ConnectionString);
        await connection.OpenAsync();
        await using var explain = new NpgsqlCommand($"EXPLAIN (FORMAT JSON) {RetentionSweeper.InboxSweepSql}", connection);
        explain.Parameters.Add(new NpgsqlParameter<DateTimeOffset>("from", DateTimeOffset.MinValue));
        explain.Parameters.Add(new NpgsqlParameter<DateTimeOffset>("before", before));
        explain.Parameters.Add(new NpgsqlParameter<int>("batch", Retention.BatchSize));
        using var document = JsonDocument.Parse((string)(await explain.ExecuteScalarAsync())!);
        var nodes = new List<PlanNode>();
        Collect(document.RootElement[0].GetProperty("Plan"), nodes);
        return nodes;
    }

    private static void Collect(JsonElement node, List<PlanNode> nodes)
    {
        nodes.Add(new PlanNode(
            node.GetProperty("Node Type").GetString()!,
            node.TryGetProperty("Relation Name", out var relation) ? relation.GetString() : null,
            node.TryGetProperty("Index Name", out var index) ? index.GetString() : null));
        if (node.TryGetProperty("Plans", out var children))
        {
            foreach (var child in children.EnumerateArray())
            {
                Collect(child, nodes);
            }
        }
    }

    private sealed record PlanNode(string Type, string? Relation, string? Index);
}
