using System.Net;
using Conveyor.Api;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Api;

/// <summary>
/// A cancel or run-now runs on a database session of its own, outside the pool ,
/// and waits up to 5 s for a job a worker holds. A burst of them opened one session per request, unbounded: enough
/// cancels of running jobs at once took every connection PostgreSQL allows, the workers' too. One Api now has at most
/// <see cref="ApiApp.MaxRowLockSessions"/> such sessions; a request that cannot get one in time is a 503.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class RowLockSessionLimitTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_burst_of_cancels_of_a_held_job_opens_at_most_the_limits_sessions_and_each_is_answered()
    {
        await using var api = await fixture.StartApiAsync();
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));

        // The job's row held, as a worker's inbox transaction holds it while the job runs.
        await using var hold = await HeldJobRow.LockAsync(fixture, accepted.JobId);

        var cancels = Enumerable.Range(0, 3 * ApiApp.MaxRowLockSessions).Select(_ => api.Client.CancelJobAsync(accepted.JobId)).ToList();
        var all = Task.WhenAll(cancels);
        await fixture.WaitForLockWaitersAsync(ApiApp.MaxRowLockSessions);
        long most = 0;
        await using (var probe = new NpgsqlConnection(fixture.ConnectionString))
        {
            await probe.OpenAsync();
            while (!all.IsCompleted)
            {
                await using var waiting = new NpgsqlCommand(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", probe);
                most = Math.Max(most, (long)(await waiting.ExecuteScalarAsync())!);
                await Task.WhenAny(all, Task.Delay(20));
            }
        }

        var answers = await all;
        Assert.True(most <= ApiApp.MaxRowLockSessions, $"{most} cancels waited on the job's row at once");
        foreach (var answer in answers)
        {
            // Busy (the row held), or no session free in time: either way nothing changed, and Retry-After says when to come back.
            Assert.Contains(answer.StatusCode, new[] { HttpStatusCode.Conflict, HttpStatusCode.ServiceUnavailable });
            Assert.NotNull(answer.Headers.RetryAfter);
            answer.Dispose();
        }

        // With the row let go, the sessions are free again and a cancel goes through.
        await hold.RollbackAsync();
        using var cancelled = await api.Client.CancelJobAsync(accepted.JobId);
        Assert.Equal(HttpStatusCode.OK, cancelled.StatusCode);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(JobStatus.Cancelled, (await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == accepted.JobId)).Status);
    }
}
