using Conveyor.Tests.Infrastructure;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>The PostgreSQL session of this run's database that holds an Api's queue lock, and ending it as the server would.</summary>
public static class QueueLockSessions
{
    /// <summary>The backend holding a queue lock, once one does; <paramref name="whileWaiting"/> runs before each look.</summary>
    public static async Task<int> FindAsync(ConveyorFixture fixture, Action? whileWaiting = null)
    {
        int? pid = null;
        await Eventually.AssertAsync(async () =>
        {
            whileWaiting?.Invoke();
            await using var connection = new NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            await using var find = new NpgsqlCommand(
                """
                SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
                   AND a.application_name = 'conveyor-api-queue-lock'
                """, connection);
            pid = (int?)await find.ExecuteScalarAsync();
            Assert.NotNull(pid);
        });
        return pid!.Value;
    }

    /// <summary>Sessions of this run's database that hold or try a queue lock.</summary>
    public static async Task<long> CountAsync(ConveyorFixture fixture)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var count = new NpgsqlCommand(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'conveyor-api-queue-lock'",
            connection);
        return (long)(await count.ExecuteScalarAsync())!;
    }

    /// <summary>True when the backend was there to end.</summary>
    public static async Task<bool> TerminateAsync(ConveyorFixture fixture, int pid)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var terminate = new NpgsqlCommand("SELECT pg_terminate_backend(@pid)", connection);
        terminate.Parameters.AddWithValue("pid", pid);
        return await terminate.ExecuteScalarAsync() is true;
    }
}
