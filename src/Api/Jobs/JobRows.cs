using System.Threading.Channels;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Inserts the rows of new jobs, committed before <see cref="TryInsertAsync"/> returns, with group
/// commit: submissions that arrive while the database is busy with earlier ones wait for the next
/// batch, which inserts them all with one <c>INSERT … ON CONFLICT DO NOTHING</c> in one transaction
/// (one round trip, one WAL flush). A lone submission goes at once, in a batch of one.
/// </summary>
/// <remarks>
/// <para>
/// A row that conflicts on a unique key (the Idempotency-Key; the kind and business key) with a
/// committed job, or with an earlier row of its own batch, is not inserted and answers false.
/// PostgreSQL first waits for a concurrent insert of the same key to commit or roll back, so false
/// means the other row is committed and can be read.
/// </para>
/// <para>
/// So is a row whose Idempotency-Key names another job as an alias (<see cref="JobKeyAlias"/>). Aliases
/// live in a table of their own, which no unique index shares with the jobs: a batch holding keyed rows
/// first takes each key's lock (<see cref="KeyLocks"/>) shared, in the same transaction, so an alias being
/// recorded for one of them (under the lock held exclusively) is committed before the insert looks for it,
/// and an alias recorded later finds the row.
/// </para>
/// <para>
/// A row whose write starts later than <see cref="SettleHorizon.StartWithin"/> after its <c>created_at</c> (it waited
/// for a batch slot, a connection or a key's lock) is not inserted and fails as the database being unavailable:
/// the oldest-first listing counts on no row committing later than its settle horizon (ADR 0013).
/// </para>
/// <para>
/// Plain Npgsql, not EF Core: a context, the change tracker and SaveChanges cost more CPU than the
/// insert itself, and EF Core cannot say ON CONFLICT. The statement takes arrays, so it is one
/// prepared statement whatever the batch size, and the connection string is the one EF Core's
/// contexts use (<see cref="StorageServiceCollectionExtensions.ForContexts"/>): both draw on the
/// same Npgsql pool, whose connections are not reset between uses.
/// </para>
/// </remarks>
public sealed class JobRows : IAsyncDisposable
{
    /// <summary>
    /// Batches written at once, each on a pooled connection. Enough that a submission seldom waits
    /// for a slot longer than a commit; few enough that under load each batch carries many rows
    /// (about 15 per commit with 64 submissions in flight).
    /// </summary>
    private const int ConcurrentBatches = 4;

    private const int MaxBatchSize = 128;

    /// <summary>
    /// Inserts the rows whose write starts in time (<see cref="SettleHorizon"/>: within <c>$11</c> of their created_at)
    /// and names each row that did not: <c>true</c> for a row inserted, <c>false</c> for one too late. A row in time and
    /// not named conflicted. A row's age is what it had waited in the Api when the batch was sent (<c>$12</c>, by the
    /// clock that stamped its created_at) plus the time since this transaction began (the database's clock, read once
    /// per row, after the key locks): two durations, each on one clock, so clocks that disagree change nothing.
    /// </summary>
    private const string InsertSql = """
        WITH row AS MATERIALIZED (
            SELECT r.*, r.waited + (clock_timestamp() - transaction_timestamp()) < $11::interval AS in_time
              FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::bytea[], $9::timestamptz[], $10::timestamptz[], $12::interval[])
                   AS r (id, kind, business_key, status, idempotency_key, request_hash, payload_hash, request_body, created_at, updated_at, waited)),
        inserted AS (
            INSERT INTO jobs (id, kind, business_key, status, attempts, idempotency_key, request_hash, payload_hash, request_body, created_at, updated_at)
            SELECT id, kind, business_key, status, 0, idempotency_key, request_hash, payload_hash, request_body, created_at, updated_at
              FROM row
             WHERE row.in_time
               AND (row.idempotency_key IS NULL
                    OR NOT EXISTS (SELECT 1 FROM job_key_aliases a WHERE a.idempotency_key = row.idempotency_key))
            ON CONFLICT DO NOTHING
            RETURNING id)
        SELECT id, true FROM inserted
        UNION ALL
        SELECT id, false FROM row WHERE NOT row.in_time
        """;

    private readonly string _connectionString;
    private readonly SettleHorizon _horizon;
    private readonly TimeProvider _clock;
    private readonly Channel<PendingRow> _pending = Channel.CreateUnbounded<PendingRow>(new UnboundedChannelOptions { SingleReader = true });
    private readonly SemaphoreSlim _batchSlots = new(ConcurrentBatches, ConcurrentBatches);
    private readonly Task _dispatcher;

    /// <param name="clock">The clock submissions stamp their jobs' <c>created_at</c> with: how long a row waited is read from it.</param>
    public JobRows(IConfiguration configuration, IOptions<JobListingOptions> listing, TimeProvider clock)
    {
        _clock = clock;
        _connectionString = StorageServiceCollectionExtensions.ForContexts(StorageServiceCollectionExtensions.ConnectionString(configuration));
        _horizon = SettleHorizon.From(listing.Value);

        // The batches belong to no request: keep the first caller's trace (and anything else in its
        // execution context) out of them.
        using (ExecutionContext.SuppressFlow())
        {
            _dispatcher = Task.Run(DispatchAsync);
        }
    }

    /// <summary>
    /// True when the row was inserted and committed; false when a job with one of its unique keys
    /// exists. Once queued, the row's fate is not left to the request's cancellation: the caller
    /// always learns whether it was written, and so can remove it again.
    /// </summary>
    public async Task<bool> TryInsertAsync(Job job, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var row = new PendingRow(job);
        ObjectDisposedException.ThrowIf(!_pending.Writer.TryWrite(row), this);

        var (inserted, failure) = await row.Outcome.Task;
        // Wrapped for this caller's stack, as EF Core wraps a failed save: the cause stays the inner
        // exception, which tells an unreachable database (503) from a failed statement (500), see
        // DatabaseFailures. Not an NpgsqlException, which would say "unreachable" whatever the cause.
        return failure is null
            ? inserted
            : throw new DbUpdateException("Inserting the job row failed.", failure);
    }

    public async ValueTask DisposeAsync()
    {
        _pending.Writer.TryComplete();
        await _dispatcher;
        // Wait for the batches still running.
        for (var slot = 0; slot < ConcurrentBatches; slot++)
        {
            await _batchSlots.WaitAsync();
        }

        _batchSlots.Dispose();
    }

    /// <summary>Whenever a batch slot is free, takes every row waiting (up to a batch) and writes them.</summary>
    private async Task DispatchAsync()
    {
        var reader = _pending.Reader;
        while (await reader.WaitToReadAsync())
        {
            await _batchSlots.WaitAsync();
            var batch = new List<PendingRow>();
            while (batch.Count < MaxBatchSize && reader.TryRead(out var row))
            {
                batch.Add(row);
            }

            _ = WriteAsync(batch);
        }
    }

    private async Task WriteAsync(List<PendingRow> batch)
    {
        try
        {
            await WriteRowsAsync(batch);
        }
        catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.DeadlockDetected && batch.Count > 1)
        {
            // Two batches (of this replica or another) each hold a key the other waits for. Rows
            // one by one cannot hold one key while waiting for another. Each commits alone, so each
            // has its own outcome: a row written stays written whatever happens to the next one.
            foreach (var row in batch)
            {
                try
                {
                    await WriteRowsAsync([row]);
                }
                catch (Exception rowFailure)
                {
                    row.Outcome.TrySetResult((false, rowFailure));
                }
            }
        }
        catch (Exception ex)
        {
            // The batch's one transaction did not commit: none of its rows was written.
            foreach (var row in batch)
            {
                row.Outcome.TrySetResult((false, ex));
            }
        }
        finally
        {
            _batchSlots.Release();
        }
    }

    /// <summary>
    /// Inserts the rows in one transaction and completes each with whether it was inserted, or, for a row whose
    /// write started too late to be listed in order (<see cref="SettleHorizon"/>), with that failure (503).
    /// </summary>
    private async Task WriteRowsAsync(List<PendingRow> rows)
    {
        var written = await InsertAsync(rows);
        foreach (var row in rows)
        {
            row.Outcome.TrySetResult(written.TryGetValue(row.Job.Id, out var inTime) && !inTime
                ? (false, SettleHorizon.TooLate(row.Job.Id))
                : (inTime, null));
        }
    }

    /// <summary>The rows inserted (true) and those refused as too late (false); the others conflicted.</summary>
    private async Task<Dictionary<Guid, bool>> InsertAsync(List<PendingRow> batch)
    {
        var jobs = batch.ConvertAll(row => row.Job);
        var sent = _clock.GetUtcNow();
        string[] keys = [.. jobs.Select(j => j.IdempotencyKey).OfType<string>()];
        await using var connection = new NpgsqlConnection(_connectionString);
        await connection.OpenAsync();
        // Still one round trip: the statements of a batch run in one implicit transaction, which holds the
        // locks to its commit, and each statement reads what was committed when it starts, after the locks.
        await using var command = new NpgsqlBatch(connection);
        if (keys.Length > 0)
        {
            command.BatchCommands.Add(new NpgsqlBatchCommand(KeyLocks.SharedEachSql) { Parameters = { new NpgsqlParameter<string[]> { TypedValue = keys } } });
        }

        // Past the locks: the insert, which checks each row's age, and so the commit that follows it in this round
        // trip, are bounded by the server from here (ADR 0013).
        command.BatchCommands.Add(new NpgsqlBatchCommand(
            $"SELECT set_config('statement_timeout', '{_horizon.TailLimitMilliseconds}', true)"));

        command.BatchCommands.Add(new NpgsqlBatchCommand(InsertSql)
        {
            Parameters =
            {
                new NpgsqlParameter<Guid[]> { TypedValue = [.. jobs.Select(j => j.Id)] },
                new NpgsqlParameter<string[]> { TypedValue = [.. jobs.Select(j => j.Kind)] },
                new NpgsqlParameter<string[]> { TypedValue = [.. jobs.Select(j => j.BusinessKey)] },
                new NpgsqlParameter<string[]> { TypedValue = [.. jobs.Select(j => j.Status)] },
                new NpgsqlParameter<string?[]> { TypedValue = [.. jobs.Select(j => j.IdempotencyKey)] },
                new NpgsqlParameter<string?[]> { TypedValue = [.. jobs.Select(j => j.RequestHash)] },
                new NpgsqlParameter<byte[]?[]> { TypedValue = [.. jobs.Select(j => j.PayloadHash)] },
                new NpgsqlParameter<byte[]?[]> { TypedValue = [.. jobs.Select(j => j.RequestBody)] },
                new NpgsqlParameter<DateTimeOffset[]> { TypedValue = [.. jobs.Select(j => j.CreatedAt)] },
                new NpgsqlParameter<DateTimeOffset[]> { TypedValue = [.. jobs.Select(j => j.UpdatedAt)] },
                _horizon.StartWithinParameter(),
                new NpgsqlParameter<TimeSpan[]> { TypedValue = [.. jobs.Select(j => sent - j.CreatedAt)] },
            },
        });
        await command.PrepareAsync();
        var written = new Dictionary<Guid, bool>();
        await using var reader = await command.ExecuteReaderAsync();
        // Past the locks' rows (one per key, void) and the setting's to the insert's.
        for (var skipped = keys.Length > 0 ? 2 : 1; skipped > 0; skipped--)
        {
            await reader.NextResultAsync();
        }

        while (await reader.ReadAsync())
        {
            written[reader.GetGuid(0)] = reader.GetBoolean(1);
        }

        return written;
    }

    private sealed class PendingRow(Job job)
    {
        public Job Job { get; } = job;

        /// <summary>Completed off the batch's thread, so one request's continuation never delays the rest.</summary>
        public TaskCompletionSource<(bool Inserted, Exception? Failure)> Outcome { get; } =
            new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
