using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Api;

internal static class JobRowAges
{
    /// <summary>Makes a job look last updated <paramref name="by"/> ago, as if time had passed since.</summary>
    public static async Task BackdateJobAsync(this ConveyorFixture fixture, Guid jobId, TimeSpan by)
    {
        await using var db = fixture.CreateDbContext();
        var updatedAt = DateTimeOffset.UtcNow - by;
        Assert.Equal(1, await db.Jobs.Where(j => j.Id == jobId).ExecuteUpdateAsync(s => s.SetProperty(j => j.UpdatedAt, updatedAt)));
    }
}
