using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Lets a test decide when a stored redelivery (or a job scheduled for later) comes: it sets the
/// delay far beyond itself and makes the rows due when it is ready for the next attempt, instead of
/// racing a short delay it cannot control on a busy machine.
/// </summary>
public static class ScheduledMessagesDue
{
    /// <summary>
    /// Makes every scheduled message due now and wakes the dispatchers as the store does when it
    /// stores one (NOTIFY); returns the due time set. A dispatcher not yet listening finds the rows
    /// due in its first round.
    /// </summary>
    public static async Task<DateTimeOffset> MakeScheduledMessagesDueAsync(this ConveyorFixture fixture)
    {
        var now = DateTimeOffset.UtcNow;
        await using var db = fixture.CreateDbContext();
        await db.ScheduledMessages.ExecuteUpdateAsync(set => set.SetProperty(m => m.DueAt, now));
        var dueAt = now.ToUnixTimeMilliseconds().ToString(System.Globalization.CultureInfo.InvariantCulture);
        await db.Database.ExecuteSqlInterpolatedAsync($"SELECT pg_notify({RedeliveryStore.Channel}, {dueAt})");
        return now;
    }
}
