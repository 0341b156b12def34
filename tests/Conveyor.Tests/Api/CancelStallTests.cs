using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using System.Net;
using System.Net.Http.Json;

namespace Conveyor.Tests.Api;

/// <summary>
/// A cancel's request is aborted while the Api's path to PostgreSQL stops answering, its transaction holding a
/// scheduled job's stored command and about to hold the job's row. Its statements had the request's token, so
/// Npgsql cancelled them: it connects to send a cancel request and waits for its answer, without bound when the
/// connection string's <c>Timeout</c> is 0, as here, and the transaction stayed open with both rows locked (a
/// worker claiming the job, the dispatcher taking the command, waited behind it) until the server answered again.
/// Now the request stops waiting at once and closes the cancel's session, which rolls the transaction back; a close
/// the server never sees (<c>serverSeesTheClose</c> false: a partition) leaves the session idle in its transaction,
/// which the server ends after 10 s (the cancel's <c>idle_in_transaction_session_timeout</c>).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class CancelStallTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_cancel_aborted_while_the_database_stops_answering_leaves_the_job_and_its_command_unlocked(bool serverSeesTheClose)
    {
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var relay = await OutageProxy.ToAsync(database.Host!, database.Port);
        database.Host = "127.0.0.1";
        database.Port = relay.Port;
        database.Timeout = 0;
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = database.ConnectionString });
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));

        // What a worker's inbox transaction does while it claims the job: the job's row locked, so the cancel (its
        // stored command already locked) waits for it on the server.
        await using var hold = await HeldJobRow.LockAsync(fixture, accepted.JobId);

        using var aborted = new CancellationTokenSource();
        var cancel = api.Client.DeleteAsync(new Uri($"/api/jobs/{accepted.JobId}", UriKind.Relative), aborted.Token);
        try
        {
            await fixture.WaitForLockWaitersAsync(1);

            // The server stops answering the Api, and the client gives up on its request; then the worker lets go,
            // so the cancel's update goes through on the server and its transaction holds both rows.
            relay.Stall(passCloses: serverSeesTheClose);
            await aborted.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => cancel);
            await hold.CommitAsync();

            // Still stalled: the rows must be free with the abandoned request gone, not when the server answers again.
            await Eventually.AssertAsync(
                async () => Assert.Equal((1, 1), await LockAsync(accepted.JobId)),
                DescribeAsync,
                TimeSpan.FromSeconds(45));
        }
        finally
        {
            relay.Resume();
        }

        // Nothing was committed: the job is still scheduled, and a cancel now goes through.
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(JobStatus.Scheduled, (await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == accepted.JobId)).Status);
        }

        using var response = await api.Client.CancelJobAsync(accepted.JobId);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal(JobStatus.Cancelled, (await response.Content.ReadFromJsonAsync<JobDetails>())?.Status);
    }

    /// <summary>The job's row and its stored command's row, each locked at once (NOWAIT) by a transaction of the test's own.</summary>
    private async Task<(int Job, int Command)> LockAsync(Guid jobId)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var transaction = await connection.BeginTransactionAsync();
        await using var job = new NpgsqlCommand("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE NOWAIT", connection, transaction);
        job.Parameters.AddWithValue(jobId);
        await using var command = new NpgsqlCommand("SELECT 1 FROM scheduled_messages WHERE dedupe_key = $1 FOR UPDATE NOWAIT", connection, transaction);
        command.Parameters.AddWithValue($"job:{jobId}");
        var locked = ((int)(await job.ExecuteScalarAsync())!, (int)(await command.ExecuteScalarAsync())!);
        await transaction.RollbackAsync();
        return locked;
    }

    /// <summary>The sessions of this run's database other than the asking one, and what each is doing.</summary>
    private async Task<string> DescribeAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var sessions = new NpgsqlCommand(
            """
            SELECT coalesce(string_agg(format('%s %s: %s', pid, state, left(query, 80)), '; '), 'none')
              FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
            """, connection);
        return $"sessions: {await sessions.ExecuteScalarAsync()}";
    }
}
