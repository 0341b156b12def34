using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Storage;

/// <summary>
/// The migration to the (kind, status, created_at, id) index builds it CONCURRENTLY, outside the
/// migration's transaction, on a table that already holds jobs; and a run that stopped halfway
/// (the new index left behind, the old ones still there) completes when run again.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class JobIndexMigrationTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "jobindex")
{
    private const string Before = "20261129234136_ScheduledMessageRefusal";

    [Fact]
    public async Task Run_again_after_stopping_halfway_it_leaves_one_valid_index_by_kind_status_and_time()
    {
        await Database.MigrateAsync(Before);
        await Database.ExecuteAsync($"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), 'charge-payment', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now()
              FROM generate_series(1, 2000);
            -- What a run that stopped after building the index left: a wrong one of that name will do.
            CREATE INDEX ix_jobs_kind_status_created_at_id ON jobs (kind);
            """);

        await Database.MigrateAsync();

        await using var db = Database.CreateDbContext();
        var indexes = await db.Database.SqlQuery<IndexRow>($"""
            SELECT c.relname AS name, pg_get_indexdef(c.oid) AS definition, i.indisvalid AS valid
              FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
             WHERE i.indrelid = 'jobs'::regclass
            """).ToListAsync();
        var index = Assert.Single(indexes, i => i.Name == "ix_jobs_kind_status_created_at_id");
        Assert.True(index.Valid);
        Assert.Contains("(kind, status, created_at, id)", index.Definition, StringComparison.Ordinal);
        Assert.Contains("WHERE", index.Definition, StringComparison.Ordinal);
        Assert.DoesNotContain(indexes, i => i.Name is "ix_jobs_created_at_id" or "ix_jobs_status_created_at_id");
        Assert.Empty(await db.Database.GetPendingMigrationsAsync());
        Assert.Equal(2000, await db.Jobs.CountAsync(j => j.Kind == "charge-payment" && j.Status == JobStatus.Succeeded));
    }

    private sealed record IndexRow(string Name, string Definition, bool Valid);
}
