using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A job's row locked by a transaction of the test's own, as a worker's inbox transaction holds it while an attempt
/// runs: held until committed or rolled back (disposing rolls back). Its connection and transaction take further
/// statements of the test.
/// </summary>
public sealed class HeldJobRow : IAsyncDisposable
{
    private HeldJobRow(NpgsqlConnection connection, NpgsqlTransaction transaction)
    {
        Connection = connection;
        Transaction = transaction;
    }

    public NpgsqlConnection Connection { get; }

    public NpgsqlTransaction Transaction { get; }

    public static async Task<HeldJobRow> LockAsync(ConveyorFixture fixture, Guid jobId)
    {
        var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        var transaction = await connection.BeginTransactionAsync();
        var held = new HeldJobRow(connection, transaction);
        await using var lockRow = new NpgsqlCommand("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", connection, transaction);
        lockRow.Parameters.AddWithValue(jobId);
        Assert.Equal(1, await lockRow.ExecuteScalarAsync());
        return held;
    }

    public Task CommitAsync() => Transaction.CommitAsync();

    public Task RollbackAsync() => Transaction.RollbackAsync();

    public async ValueTask DisposeAsync()
    {
        await Transaction.DisposeAsync();
        await Connection.DisposeAsync();
    }
}
