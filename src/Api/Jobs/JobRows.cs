using System.Threading.Channels;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
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

    private const string InsertSql = """
        INSERT INTO jobs (id, kind, business_key, status, attempts, idempotency_key, request_hash, payload_hash, request_body, created_at, updated_at)
        SELECT id, kind, business_key, status, 0, idempotency_key, request_hash, payload_hash, request_body, created_at, updated_at
          FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[], $8::bytea[], $9::timestamptz[], $10::timestamptz[])
               AS row (id, kind, business_key, status, idempotency_key, request_hash, payload_hash, request_body, created_at, updated_at)
         WHERE row.idempotency_key IS NULL
            OR NOT EXISTS (SELECT 1 FROM job_key_aliases a WHERE a.idempotency_key = row.idempotency_key)
        ON CONFLICT DO NOTHING
        RETURNING id
        """;

    private readonly string _connectionString;
    private readonly Channel<PendingRow> _pending = Channel.CreateUnbounded<PendingRow>(new UnboundedChannelOptions { SingleReader = true });
    private readonly SemaphoreSlim _batchSlots = new(ConcurrentBatches, ConcurrentBatches);
    private readonly Task _dispatcher;

    public JobRows(IConfiguration configuration)
    {
        _connectionString = StorageServiceCollectionExtensions.ForContexts(StorageServiceCollectionExtensions.ConnectionString(configuration));

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

    /// <summary>Inserts the rows in one transaction and completes each with whether it was inserted.</summary>
    private async Task WriteRowsAsync(List<PendingRow> rows)
    {
        var inserted = await InsertAsync(rows);
        foreach (var row in rows)
        {
            row.Outcome.TrySetResult((inserted.Contains(row.Job.Id), null));
        }
    }

    /// <summary>The ids of the rows inserted; the others conflicted.</summary>
    private async Task<HashSet<Guid>> InsertAsync(List<PendingRow> batch)
    {
        var jobs = batch.ConvertAll(row => row.Job);
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
            },
        });
        await command.PrepareAsync();
        var inserted = new HashSet<Guid>();
        await using var reader = await command.ExecuteReaderAsync();
        if (keys.Length > 0)
        {
            // Past the locks' rows (one per key, void) to the insert's.
            await reader.NextResultAsync();
        }

        while (await reader.ReadAsync())
        {
            inserted.Add(reader.GetGuid(0));
        }

        return inserted;
    }

    private sealed class PendingRow(Job job)
    {
        public Job Job { get; } = job;

        /// <summary>Completed off the batch's thread, so one request's continuation never delays the rest.</summary>
        public TaskCompletionSource<(bool Inserted, Exception? Failure)> Outcome { get; } =
            new(TaskCreationOptions.RunContinuationsAsynchronously);
    }
}
