using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A full inbox batch finds its job rows, and the inbox rows of its failed attempts, with one index
/// probe per message, whatever the planner believes of the tables: never analysed (a new deployment,
/// a table that grew faster than autovacuum analysed it), or analysed before the batch's kind was
/// busy (a kind deployed since). Planned as a join against the batch's keys, or as a lookup of an
/// array of them, such statistics made every full batch read every job (and every inbox row) of its
/// kind. A database of the test's own, so that the tables' counters count only the batch and their
/// statistics stay as the test left them.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class InboxClaimPlanTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "plan")
{
    private const string Kind = "charge-payment";
    private const string Consumer = "charge-payment";
    private const int Batch = 64;
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);


    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_full_batch_reads_no_other_row_of_its_kind_whatever_the_statistics_say(bool analysedBeforeTheKindWasBusy)
    {
        await Database.MigrateAsync();

        await Database.ExecuteAsync("ALTER TABLE jobs SET (autovacuum_enabled = false); ALTER TABLE inbox SET (autovacuum_enabled = false)");
        if (analysedBeforeTheKindWasBusy)
        {
            // Statistics that know the tables but not the kind: a kind deployed, or busy, since the last ANALYZE.
            await Database.ExecuteAsync($"""
                INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
                SELECT gen_random_uuid(), 'deliver-webhook', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now()
                  FROM generate_series(1, 500);
                INSERT INTO inbox (consumer_id, message_key, received_at, status)
                SELECT 'deliver-webhook', gen_random_uuid()::text, now(), '{InboxStatus.Done}' FROM generate_series(1, 500);
                ANALYZE jobs;
                ANALYZE inbox;
                """);
        }

        // Twenty thousand earlier messages of the kind, with their jobs, none of them analysed.
        await Database.ExecuteAsync($"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{Kind}', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now()
              FROM generate_series(1, 20000);
            INSERT INTO inbox (consumer_id, message_key, received_at, status)
            SELECT '{Consumer}', business_key, now(), '{InboxStatus.Done}' FROM jobs WHERE kind = '{Kind}';
            """);
        var before = await ReadsAsync();

        var (succeeded, failed) = await RunOneFullBatchAsync();

        var after = await ReadsAsync();
        // The batch's keys are new: each lookup misses in the index and reads no row. Reading the kind's
        // rows to filter them would read all 20,000 of a table, once per batch.
        Assert.True(after.Jobs - before.Jobs < 1000, $"the batch read {after.Jobs - before.Jobs} job rows");
        Assert.True(after.Inbox - before.Inbox < 1000, $"the batch read {after.Inbox - before.Inbox} inbox rows");
        await using var check = Database.CreateDbContext();
        Assert.Equal(succeeded.Count, await check.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded && succeeded.Contains(j.BusinessKey)));
        // A failed attempt's inbox row goes, so that its message is claimed again; a handled one's stays.
        Assert.Equal(succeeded.Order(StringComparer.Ordinal),
            await check.Inbox.Where(i => succeeded.Contains(i.MessageKey) || failed.Contains(i.MessageKey)).Select(i => i.MessageKey).OrderBy(k => k).ToListAsync());
    }

    [Fact]
    public async Task A_batch_plan_made_while_the_tables_were_small_still_probes_once_they_have_grown()
    {
        // The batch's statements are planned once per connection (a generic plan), so a plan made while the
        // tables were analysed small (a new deployment's first jobs) is kept while they grow, until the next
        // ANALYZE: with a sequential scan in it, every later batch would read every job and inbox row.
        await MigrateWithHandledJobsAsync(5);
        await Database.ExecuteAsync("ANALYZE jobs; ANALYZE inbox");
        var before = await ReadsAsync();
        // Batches on the small tables, each with a success and a failure, one connection for all (one batch at a
        // time): its statements are prepared on their second use and planned then.
        for (var i = 0; i < 3; i++)
        {
            await RunOneFullBatchAsync(size: 2);
        }

        // Twenty thousand more of the kind, written without reading either table (its pooled connections, and their
        // plans, stay: the reads are counted only at the end).
        await Database.ExecuteAsync($"""
            WITH k AS (SELECT gen_random_uuid()::text AS business_key FROM generate_series(1, 20000)),
                 j AS (INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
                       SELECT gen_random_uuid(), '{Kind}', k.business_key, '{JobStatus.Succeeded}', 1, now(), now() FROM k
                       RETURNING business_key)
            INSERT INTO inbox (consumer_id, message_key, received_at, status)
            SELECT '{Consumer}', j.business_key, now(), '{InboxStatus.Done}' FROM j;
            """);

        var (succeeded, _) = await RunOneFullBatchAsync();

        var after = await ReadsAsync();
        // Seven batches of one or two messages and a full one, a probe per key: a scan would read 20,000 rows a key.
        Assert.True(after.Jobs - before.Jobs < 1000, $"the batches read {after.Jobs - before.Jobs} job rows");
        Assert.True(after.Inbox - before.Inbox < 1000, $"the batches read {after.Inbox - before.Inbox} inbox rows");
        await using var check = Database.CreateDbContext();
        Assert.Equal(succeeded.Count, await check.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded && succeeded.Contains(j.BusinessKey)));
    }

    [Fact]
    public async Task A_full_batch_of_copies_reads_only_their_own_inbox_rows_to_compare_what_they_say()
    {
        // ADR 0011: copies of applied messages read their rows' fingerprints, one primary-key probe each.
        await MigrateWithHandledJobsAsync(20000);
        await using var keys = Database.CreateDbContext();
        var copies = await keys.Inbox.OrderBy(i => i.MessageKey).Take(Batch).Select(i => new { i.MessageKey, i.PayloadHash }).ToListAsync();
        var before = await ReadsAsync();

        await using var batcher = new InboxBatcher(Consumer, Kind, Batch, maxConcurrentBatches: 1, eagerBatches: 1,
            Database.DbContextFactory(), TimeProvider.System, NullLogger.Instance, Timeout.InfiniteTimeSpan);
        // Half of them say what was applied, half something else.
        var members = copies.Select((c, i) => batcher.Join(c.MessageKey, Guid.NewGuid(), null, i % 2 == 0 ? c.PayloadHash : [.. c.PayloadHash!.Reverse()])).ToList();
        foreach (var member in members)
        {
            Assert.Equal(InboxClaim.Duplicate, await member.Claimed.WaitAsync(Patience));
            await member.Completed.WaitAsync(Patience);
        }

        var after = await ReadsAsync();
        Assert.True(after.Inbox - before.Inbox < 1000, $"the copies read {after.Inbox - before.Inbox} inbox rows");
        Assert.Equal(copies.Count / 2, members.Count(m => m.ConflictingFingerprint is not null));
        Assert.All(members.Where((_, i) => i % 2 == 1), m => Assert.Equal(copies.Single(c => c.MessageKey == m.MessageKey).PayloadHash, m.ConflictingFingerprint));
    }

    /// <summary>
    /// One message, then <see cref="Batch"/> more while its consumer runs: with one batch at a time
    /// they wait together and go into the database as one full batch when the first ends. Every
    /// other message of the full batch fails.
    /// </summary>
    private async Task<(List<string> Succeeded, List<string> Failed)> RunOneFullBatchAsync(int size = Batch)
    {
        await using var batcher = new InboxBatcher(Consumer, Kind, Batch, maxConcurrentBatches: 1, eagerBatches: 1,
            Database.DbContextFactory(), TimeProvider.System, NullLogger.Instance, Timeout.InfiniteTimeSpan);
        var first = batcher.Join(Guid.NewGuid().ToString(), Guid.NewGuid(), Guid.NewGuid(), fingerprint: null);
        Assert.Equal(InboxClaim.Run, await first.Claimed.WaitAsync(Patience));

        var full = Enumerable.Range(0, size).Select(_ => batcher.Join(Guid.NewGuid().ToString(), Guid.NewGuid(), Guid.NewGuid(), fingerprint: null)).ToList();
        first.RanSuccessfully([]);
        Assert.True(await first.Completed.WaitAsync(Patience));
        var (succeeded, failed) = (new List<string> { first.MessageKey }, new List<string>());
        for (var i = 0; i < full.Count; i++)
        {
            Assert.Equal(InboxClaim.Run, await full[i].Claimed.WaitAsync(Patience));
            if (i % 2 == 0)
            {
                full[i].RanSuccessfully([]);
                succeeded.Add(full[i].MessageKey);
            }
            else
            {
                full[i].RanAndFailed();
                failed.Add(full[i].MessageKey);
            }
        }

        foreach (var member in full)
        {
            await member.Completed.WaitAsync(Patience);
        }

        return (succeeded, failed);
    }

    /// <summary>
    /// The schema, with autovacuum off on jobs and inbox (their statistics stay as the test leaves them), and
    /// <paramref name="count"/> handled jobs of the kind with their inbox rows, each row's fingerprint from its key.
    /// </summary>
    private async Task MigrateWithHandledJobsAsync(int count)
    {
        await Database.MigrateAsync();
        await Database.ExecuteAsync($"""
            ALTER TABLE jobs SET (autovacuum_enabled = false); ALTER TABLE inbox SET (autovacuum_enabled = false);
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{Kind}', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now()
              FROM generate_series(1, {count});
            INSERT INTO inbox (consumer_id, message_key, received_at, status, payload_hash)
            SELECT '{Consumer}', business_key, now(), '{InboxStatus.Done}', decode(md5(business_key), 'hex') FROM jobs WHERE kind = '{Kind}';
            """);
    }

    /// <summary>The rows the jobs and inbox tables' scans have read (sequentially, or fetched through an index).</summary>
    private async Task<(long Jobs, long Inbox)> ReadsAsync() =>
        (await Database.RowsReadAsync("jobs"), await Database.RowsReadAsync("inbox"));
}
