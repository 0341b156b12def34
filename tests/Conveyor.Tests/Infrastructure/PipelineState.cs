using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Where a run's jobs are, for the message of a test that waited in vain: jobs by status, the
/// scheduled redeliveries, the inbox, every queue of the run's vhost, and the database sessions that
/// hold a transaction open or wait for a lock. A flake then says where the missing jobs were.
/// </summary>
public static class PipelineState
{
    public static async Task<string> DescribeAsync(ConveyorFixture fixture)
    {
        var parts = new List<string>();
        await using (var db = fixture.CreateDbContext())
        {
            var statuses = await db.Jobs.GroupBy(j => j.Status)
                .Select(g => new { Status = g.Key, Count = g.Count(), Attempts = g.Max(j => j.Attempts) })
                .ToListAsync();
            parts.Add("jobs by status (most attempts): " + string.Join(", ", statuses.Select(s => $"{s.Status} {s.Count} ({s.Attempts})")));
            var scheduled = await db.ScheduledMessages.AsNoTracking().OrderBy(s => s.DueAt).Select(s => s.DueAt).ToListAsync();
            parts.Add(scheduled.Count == 0
                ? "no scheduled redeliveries"
                : $"{scheduled.Count} scheduled redeliveries, due {scheduled[0]:O} to {scheduled[^1]:O} (now {DateTimeOffset.UtcNow:O})");
            parts.Add($"{await db.Inbox.CountAsync()} inbox rows");
        }

        var queues = await fixture.Rabbit.QueuesAsync(fixture.VirtualHost);
        parts.Add("queues (ready/unacked/consumers): " + string.Join(", ", queues
            .Where(q => q.Messages > 0 || q.Consumers > 0)
            .Select(q => $"{q.Name} {q.Ready}/{q.Unacked}/{q.Consumers}")));

        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var sessions = new NpgsqlCommand("""
            SELECT state, coalesce(wait_event_type, ''), now() - xact_start, left(query, 120)
              FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND (state = 'idle in transaction' OR wait_event_type = 'Lock' OR (state = 'active' AND now() - xact_start > interval '1 second'))
            """, connection);
        await using var reader = await sessions.ExecuteReaderAsync();
        var held = new List<string>();
        while (await reader.ReadAsync())
        {
            held.Add($"[{reader.GetString(0)} {reader.GetString(1)} for {reader.GetValue(2)}: {reader.GetString(3)}]");
        }

        parts.Add(held.Count == 0 ? "no session holds a transaction open or waits for a lock" : "sessions: " + string.Join(" ", held));
        return string.Join("; ", parts);
    }
}
