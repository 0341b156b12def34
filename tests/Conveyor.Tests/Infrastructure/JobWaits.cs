using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Infrastructure;

/// <summary>Waits, within <see cref="Eventually.DefaultTimeout"/>, for a job's row to reach a status.</summary>
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

    /// <inheritdoc cref="WaitForJobAsync(ConveyorFixture, string, string)"/>
    public static Task<Job> WaitForJobAsync(this ConveyorFixture fixture, Guid businessId, string status) =>
        fixture.WaitForJobAsync(businessId.ToString(), status);
}
