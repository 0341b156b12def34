using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Api;

internal static class JobRowAges
{
    /// <summary>
    /// Makes a job look last updated <paramref name="by"/> ago, as if time had passed since; its
    /// creation moves back with it where needed, as a job is never updated before it was created.
    /// </summary>
    public static async Task BackdateJobAsync(this ConveyorFixture fixture, Guid jobId, TimeSpan by)
    {
        await using var db = fixture.CreateDbContext();
        var updatedAt = DateTimeOffset.UtcNow - by;
        Assert.Equal(1, await db.Jobs.Where(j => j.Id == jobId).ExecuteUpdateAsync(s => s
            .SetProperty(j => j.UpdatedAt, updatedAt)
            .SetProperty(j => j.CreatedAt, j => j.CreatedAt < updatedAt ? j.CreatedAt : updatedAt)));
    }
}
