using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>Retention keeps job rows at least as long as inbox rows, or the worker does not start.</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class RetentionOptionsTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task A_worker_that_would_sweep_jobs_before_their_inbox_rows_refuses_to_start()
    {
        var settings = WorkerSettings.With().Override(("Retention:InboxHours", "48"), ("Retention:JobHours", "24"));

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartWorkerAsync(settings));

        Assert.Contains("Retention:JobHours (24) must be at least Retention:InboxHours (48)", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("true", "48", "48")]
    [InlineData("false", "48", "24")]
    public async Task Equal_windows_or_a_disabled_sweeper_start(string enabled, string inboxHours, string jobHours)
    {
        var settings = WorkerSettings.With().Override(
            ("Retention:Enabled", enabled), ("Retention:InboxHours", inboxHours), ("Retention:JobHours", jobHours));

        await using var worker = await fixture.StartWorkerAsync(settings);
    }
}
