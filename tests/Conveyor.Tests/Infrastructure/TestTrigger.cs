using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A trigger the test adds to a table of this run's database, with its function and a sequence
/// (all named alike) that counts how often it fired; dropped when disposed.
/// </summary>
internal sealed class TestTrigger(ConveyorFixture fixture, string name, string table) : IAsyncDisposable
{
    private bool _dropped;

    public static async Task<TestTrigger> CreateAsync(ConveyorFixture fixture, string name, string table, string sql)
    {
        await ExecuteAsync(fixture, sql);
        return new TestTrigger(fixture, name, table);
    }

    public async Task<long> FiredAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand($"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {name}", connection);
        return (long)(await command.ExecuteScalarAsync() ?? 0L);
    }

    public async ValueTask DisposeAsync()
    {
        if (!_dropped)
        {
            _dropped = true;
            await ExecuteAsync(fixture, $"DROP TRIGGER IF EXISTS {name} ON {table}; DROP FUNCTION IF EXISTS {name}(); DROP SEQUENCE IF EXISTS {name}");
        }
    }

    private static async Task ExecuteAsync(ConveyorFixture fixture, string sql)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }
}
