using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Drops a database the tests made, with any connection still open to it (<c>WITH (FORCE)</c>). Except an
/// autovacuum worker in it (the tests' inserts and ANALYZEs wake one): PostgreSQL 15 refuses to end a process of
/// no role for a user who is not a superuser, as the services' user is (42501, "must be a member of the role
/// whose process is being terminated"). Such a worker ends in moments, so the drop is tried again for a while;
/// failed, it failed a test or a whole lane's cleanup and left the database behind.
/// </summary>
public static class DatabaseDrop
{
    /// <summary>
    /// How long a test waits for a statement about a whole database (CREATE, DROP) or a test's own bulk setup: far
    /// longer than Npgsql's 30 s default, which a drop beside several builds' disk writes outlasted (the drop was
    /// cancelled, the database left behind, and the next test's CREATE found it there).
    /// </summary>
    public const int StatementTimeoutSeconds = 300;

    /// <summary>Drops <paramref name="database"/> over <paramref name="connectionString"/> (a connection to another database).</summary>
    public static async Task ForceAsync(string connectionString, string database)
    {
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await using var connection = new NpgsqlConnection(connectionString);
                await connection.OpenAsync();
                await using var drop = new NpgsqlCommand($"DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)", connection)
                {
                    CommandTimeout = StatementTimeoutSeconds,
                };
                await drop.ExecuteNonQueryAsync();
                return;
            }
            catch (PostgresException exception) when (exception.SqlState == PostgresErrorCodes.InsufficientPrivilege && attempt < 120)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(250));
            }
        }
    }
}
