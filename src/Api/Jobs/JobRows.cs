using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Npgsql;

namespace Conveyor.Api.Jobs;

/// <summary>
/// The one statement a new job costs: <c>INSERT … ON CONFLICT DO NOTHING</c> into <c>jobs</c>, in its
/// own (implicit) transaction, so the row is committed when it returns. A conflict on any unique key
/// (the Idempotency-Key; the kind and business key) inserts nothing and answers false; PostgreSQL
/// first waits for a concurrent insert of the same key to commit or roll back, so false means that
/// row was committed.
/// </summary>
/// <remarks>
/// Plain Npgsql, not EF Core: creating a context, tracking the entity and running the SaveChanges
/// pipeline cost more CPU than the insert itself, and EF Core cannot say ON CONFLICT. The connection
/// string is the one EF Core is given, so both draw on the same Npgsql pool; the statement is
/// prepared once per pooled connection.
/// </remarks>
internal sealed class JobRows(IConfiguration configuration)
{
    private const string InsertSql = """
        INSERT INTO jobs (id, kind, business_key, status, attempts, idempotency_key, request_hash, created_at, updated_at)
        VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8)
        ON CONFLICT DO NOTHING
        """;

    private readonly string _connectionString =
        configuration.GetConnectionString(StorageServiceCollectionExtensions.ConnectionStringName)
        ?? throw new InvalidOperationException($"ConnectionStrings:{StorageServiceCollectionExtensions.ConnectionStringName} is not set.");

    /// <summary>True when the row was inserted; false when a job with one of its unique keys exists.</summary>
    public async Task<bool> TryInsertAsync(Job job, CancellationToken cancellationToken)
    {
        await using var connection = new NpgsqlConnection(_connectionString);
        await connection.OpenAsync(cancellationToken);
        await using var command = new NpgsqlCommand(InsertSql, connection)
        {
            Parameters =
            {
                new NpgsqlParameter<Guid> { TypedValue = job.Id },
                new NpgsqlParameter<string> { TypedValue = job.Kind },
                new NpgsqlParameter<string> { TypedValue = job.BusinessKey },
                new NpgsqlParameter<string> { TypedValue = job.Status },
                Text(job.IdempotencyKey),
                Text(job.RequestHash),
                new NpgsqlParameter<DateTimeOffset> { TypedValue = job.CreatedAt },
                new NpgsqlParameter<DateTimeOffset> { TypedValue = job.UpdatedAt },
            },
        };
        await command.PrepareAsync(cancellationToken);
        return await command.ExecuteNonQueryAsync(cancellationToken) == 1;
    }

    private static NpgsqlParameter Text(string? value) =>
        new() { NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text, Value = value is null ? DBNull.Value : value };
}
