using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Storage;

/// <summary>
/// A runAt job's command stored before <c>scheduled_messages.job_id</c> existed names its job only in its
/// dedupe key: the migration gives it its job's id and attempts, so the many-jobs run-now finds it.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ScheduledJobRowsMigrationTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "jobrows")
{
    private const string Before = "20261201185247_JobKeyAliases";

    [Fact]
    public async Task Rows_keyed_by_their_job_get_its_id_and_attempts_and_a_run_now_of_their_kind_releases_them()
    {
        var scheduled = Guid.NewGuid();
        var retrying = Guid.NewGuid();
        var gone = Guid.NewGuid();
        var other = Guid.NewGuid();
        await Database.MigrateAsync(Before);
        await Database.ExecuteAsync($$"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            VALUES ('{{scheduled}}', 'charge-payment', 'k1', '{{JobStatus.Scheduled}}', 0, now(), now()),
                   ('{{retrying}}', 'charge-payment', 'k2', '{{JobStatus.RetryScheduled}}', 2, now(), now()),
                   ('{{other}}', 'charge-payment', 'k3', '{{JobStatus.Scheduled}}', 0, now(), now());
            INSERT INTO scheduled_messages (dedupe_key, destination, due_at, attempt, headers, body, created_at, job_id, job_attempts)
            VALUES ('job:{{scheduled}}', 'charge-payment', now() + interval '1 day', 0, '{}', '\x7b7d', now(), NULL, NULL),
                   ('job:{{retrying}}', 'charge-payment', now() + interval '1 hour', 0, '{}', '\x7b7d', now(), NULL, NULL),
                   ('job:{{gone}}', 'charge-payment', now() + interval '1 day', 0, '{}', '\x7b7d', now(), NULL, NULL),
                   ('job:not-a-job-id', 'charge-payment', now() + interval '1 day', 0, '{}', '\x7b7d', now(), NULL, NULL),
                   ('message-7', 'charge-payment', now() + interval '1 day', 1, '{}', '\x7b7d', now(), '{{other}}', 0);
            """);

        await Database.MigrateAsync();

        await using (var db = Database.CreateDbContext())
        {
            Assert.Empty(await db.Database.GetPendingMigrationsAsync());
            var rows = await db.ScheduledMessages.AsNoTracking().ToDictionaryAsync(s => s.DedupeKey);
            Assert.Equal((scheduled, 0), (rows[$"job:{scheduled}"].JobId, rows[$"job:{scheduled}"].JobAttempts));
            Assert.Equal((retrying, 2), (rows[$"job:{retrying}"].JobId, rows[$"job:{retrying}"].JobAttempts));
            // No job to name (swept), or a key that is not a job's: as they were.
            Assert.Equal((null, null), (rows[$"job:{gone}"].JobId, rows[$"job:{gone}"].JobAttempts));
            Assert.Equal((null, null), (rows["job:not-a-job-id"].JobId, rows["job:not-a-job-id"].JobAttempts));
            Assert.Equal((other, 0), (rows["message-7"].JobId, rows["message-7"].JobAttempts));
        }

        await using var api = await Fixture.StartApiAsync(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = Database.ConnectionString });
        using var response = await api.Client.PostAsJsonAsync(new Uri("/api/jobs/run-now", UriKind.Relative), new { kind = "charge-payment", status = "scheduled" });

        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
        var answer = await response.Content.ReadFromJsonAsync<JsonElement>();
        // The job whose only row was keyed by it, and the one that was named already.
        Assert.Equal(2, answer.GetProperty("released").GetInt32());
        Assert.Equal(0, answer.GetProperty("stillWaiting").GetInt32());
        await using (var db = Database.CreateDbContext())
        {
            var due = await db.ScheduledMessages.AsNoTracking().Where(s => s.DueAt <= DateTimeOffset.UtcNow).Select(s => s.DedupeKey).ToListAsync();
            Assert.Equal(new[] { $"job:{scheduled}", "message-7" }, due.Order(StringComparer.Ordinal));
        }
    }
}
