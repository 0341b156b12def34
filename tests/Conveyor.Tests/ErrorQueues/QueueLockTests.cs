using Conveyor.Api.Operations;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>The advisory lock that keeps two operations off one queue, and the session that holds it.</summary>
[Collection(ConveyorCollection.Name)]
public sealed class QueueLockTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task A_lock_is_held_by_one_session_at_a_time_which_the_server_probes_so_a_vanished_machine_releases_it_within_a_minute()
    {
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = fixture.ConnectionString })
            .Build();
        var locks = new QueueLocks(configuration, Options.Create(fixture.RabbitOptions()));
        var queue = $"lock-test-{Guid.NewGuid():N}_error";

        await using (var lease = await locks.TryAcquireAsync(queue, CancellationToken.None))
        {
            Assert.NotNull(lease);
            Assert.Null(await locks.TryAcquireAsync(queue, CancellationToken.None));

            // The kernel's defaults (two hours idle) would keep a dead Api's lock, and its queue busy, that long.
            Assert.Equal("15", await ShowAsync(lease.Connection, "tcp_keepalives_idle"));
            Assert.Equal("5", await ShowAsync(lease.Connection, "tcp_keepalives_interval"));
            Assert.Equal("3", await ShowAsync(lease.Connection, "tcp_keepalives_count"));
            Assert.Equal("30000", await ShowAsync(lease.Connection, "tcp_user_timeout"));
        }

        await using var again = await locks.TryAcquireAsync(queue, CancellationToken.None);
        Assert.NotNull(again);
    }

    private static async Task<string?> ShowAsync(NpgsqlConnection connection, string setting)
    {
        await using var command = new NpgsqlCommand($"SHOW {setting}", connection);
        return (string?)await command.ExecuteScalarAsync();
    }
}
