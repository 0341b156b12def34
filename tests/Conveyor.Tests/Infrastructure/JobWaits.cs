using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Waits, within <see cref="Eventually.DefaultTimeout"/>, for a job's row to reach a status, or for sessions to wait for locks.</summary>
public static class JobWaits
{
    /// <summary>The row of the job with <paramref name="businessKey"/> once its status is <paramref name="status"/> (it may not exist yet).</summary>
    public static async Task<Job> WaitForJobAsync(this ConveyorFixture fixture, string businessKey, string status)
    {
        Job? job = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            job = await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.BusinessKey == businessKey);
            Assert.Equal(status, job?.Status);
        });
        return job!;
    }

    /// <summary>
    /// The row of the job with <paramref name="businessKey"/> once its status is <paramref name="status"/>
    /// after exactly <paramref name="attempts"/> attempts; the pipeline's state is told when it is not by
    /// <paramref name="timeout"/> (default <see cref="Eventually.DefaultTimeout"/>).
    /// </summary>
    public static async Task<Job> WaitForJobAsync(this ConveyorFixture fixture, string businessKey, string status, int attempts, TimeSpan? timeout = null)
    {
        Job? job = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            job = await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.BusinessKey == businessKey);
            Assert.Equal((status, attempts), (job?.Status, job?.Attempts));
        }, () => PipelineState.DescribeAsync(fixture), timeout);
        return job!;
    }

    /// <inheritdoc cref="WaitForJobAsync(ConveyorFixture, string, string)"/>
    public static Task<Job> WaitForJobAsync(this ConveyorFixture fixture, Guid businessId, string status) =>
        fixture.WaitForJobAsync(businessId.ToString(), status);

    /// <summary>
    /// The row of the job with <paramref name="businessKey"/> once it has ended <c>succeeded</c> or
    /// <c>dead-lettered</c>, whichever it is: a test then asserts which, and says why with the row's error.
    /// </summary>
    public static async Task<Job> WaitForSettledJobAsync(this ConveyorFixture fixture, string businessKey)
    {
        Job? job = null;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            job = await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.BusinessKey == businessKey);
            Assert.Contains(job?.Status, new[] { JobStatus.Succeeded, JobStatus.DeadLettered });
        }, () => PipelineState.DescribeAsync(fixture));
        return job!;
    }

    /// <summary>Until exactly <paramref name="sessions"/> backends of this run's database wait for a lock (a row, a key being inserted).</summary>
    public static Task WaitForLockWaitersAsync(this ConveyorFixture fixture, long sessions) =>
        Eventually.AssertAsync(async () =>
        {
            await using var connection = new NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            await using var waiting = new NpgsqlCommand(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", connection);
            Assert.Equal(sessions, (long)(await waiting.ExecuteScalarAsync() ?? 0L));
        });
}
