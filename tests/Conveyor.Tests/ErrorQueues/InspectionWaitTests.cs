using System.Globalization;
using System.Net;
using Conveyor.Api.Operations;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>An inspection that finds its queue locked by another waits for it, on one database session.</summary>
[Collection(SecondLaneCollection.Name)]
public sealed class InspectionWaitTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int TriesWatched = 5;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// The waiting peek tries the lock ten times a second. Each try used to open a connection of its own
    /// (unpooled, so a new server process each time) for as long as <c>InspectionWaitSeconds</c>; now every
    /// try runs on the one session that then holds the lock.
    /// </summary>
    [Fact]
    public async Task A_peek_waiting_for_another_inspection_tries_the_lock_on_one_session_and_then_reads_the_queue()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        var id = await broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        var settings = ErrorQueueKit.ApiSettings();
        settings["ErrorQueues:InspectionWaitSeconds"] = 120.ToString(CultureInfo.InvariantCulture);
        await using var api = await fixture.StartApiAsync(settings);
        using var admin = ErrorQueueKit.Client(api.BaseAddress);
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = fixture.ConnectionString })
            .Build();
        var holder = await new QueueLocks(configuration, Options.Create(fixture.RabbitOptions())).TryAcquireAsync(ErrorQueueKit.ChargeErrors, CancellationToken.None);
        Assert.NotNull(holder);

        var peek = admin.GetAsync(new Uri($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/messages", UriKind.Relative));
        HashSet<(int Session, DateTime Started)> tries;
        try
        {
            tries = await WatchTriesAsync(holder.Connection.ProcessID);
        }
        finally
        {
            await holder.DisposeAsync();
        }

        using var response = await peek;
        var answer = await response.JsonAsync();
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(id.ToString(), Assert.Single(answer.GetProperty("messages").EnumerateArray()).GetProperty("messageId").GetString());
        Assert.Single(tries.Select(t => t.Session).Distinct());
    }

    /// <summary>
    /// The tries of the lock seen from the server (each one's session and start) other than the holder's,
    /// until <see cref="TriesWatched"/> of them were seen. Polled well within the 100 ms between tries.
    /// </summary>
    private async Task<HashSet<(int Session, DateTime Started)>> WatchTriesAsync(int holderSession)
    {
        await using var observer = new NpgsqlConnection(fixture.ConnectionString);
        await observer.OpenAsync();
        await using var command = new NpgsqlCommand(
            """
            SELECT pid, query_start FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'conveyor-api-queue-lock' AND pid <> $1
               AND query LIKE '%pg_try_advisory_lock%' AND query_start IS NOT NULL
            """, observer);
        command.Parameters.AddWithValue(holderSession);
        var tries = new HashSet<(int, DateTime)>();
        var deadline = DateTime.UtcNow + Eventually.DefaultTimeout;
        while (tries.Count < TriesWatched)
        {
            Assert.True(DateTime.UtcNow < deadline, $"Saw {tries.Count} tries of the lock.");
            await using (var reader = await command.ExecuteReaderAsync())
            {
                while (await reader.ReadAsync())
                {
                    tries.Add((reader.GetInt32(0), reader.GetDateTime(1)));
                }
            }

            await Task.Delay(TimeSpan.FromMilliseconds(10));
        }

        return tries;
    }
}
