using System.Globalization;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A second copy of a job's command (a producer's repeated publish, the Api publishing a stranded job
/// again) that fails transiently while the first copy's redelivery waits is stored under the same
/// dedupe key, so no second row is stored. Its attempt is counted all the same: the row that waits must
/// stand for the job's latest attempt, and the job must show that row's due time. Before, the row kept
/// the first copy's attempt count and the job the second copy's own due time (a row that does not
/// exist): when the row could then never be published it went to <c>_error</c> and the job stayed
/// <c>retry-scheduled</c> for good, since the row no longer counted as the one the job waits for.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class DuplicateCopyRedeliveryTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The worker's job pipeline logs under this category (<c>JobEndpointPipeline</c>).</summary>
    private const string JobsCategory = "Conveyor.Worker.Jobs";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_second_copy_failing_while_the_first_ones_redelivery_waits_leaves_one_row_that_its_job_waits_for()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await FoldedWebhookCopies.StartWorkerAsync(fixture, receiver, overrides: ("Consumers:DeliverWebhook:RedeliveryJitter", "0.5"));
        var (_, job) = await FoldedWebhookCopies.PublishTwiceAsync(fixture, receiver);
        Assert.Equal(2, receiver.Deliveries.Count);

        await using (var db = fixture.CreateDbContext())
        {
            var stored = await db.ScheduledMessages.AsNoTracking().SingleAsync();
            Assert.Equal((job.Id, 2), (stored.JobId, stored.JobAttempts));
            Assert.Equal(stored.DueAt.ToUnixTimeMilliseconds(), job.NextAttemptAt?.ToUnixTimeMilliseconds());
        }

        // The one row there is can never be published: the job waiting for it ends dead-lettered.
        await MakeUnpublishableAndDueAsync();
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var now = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == job.Id);
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            Assert.Equal(JobStatus.DeadLettered, now.Status);
            Assert.StartsWith("UnpublishableRedelivery: ", now.LastError, StringComparison.Ordinal);
            Assert.NotNull(now.FinishedAt);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));
    }

    /// <summary>
    /// The second copy schedules nothing: it joins the row the first stored. It logged the first copy's Warning,
    /// "failed transiently; redelivery 1 of 3 scheduled", so one redelivery read as two; it now says what it
    /// did, at Information, and only the stored one is a Warning.
    /// </summary>
    [Fact]
    public async Task A_second_copy_folded_into_the_stored_redelivery_logs_that_it_joined_it_not_that_it_scheduled_one()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        var logs = new CapturedLogs();
        await using var worker = await FoldedWebhookCopies.StartWorkerAsync(
            fixture, receiver, builder => builder.Logging.AddProvider(logs), ($"Logging:LogLevel:{JobsCategory}", "Information"));
        var (webhookId, _) = await FoldedWebhookCopies.PublishTwiceAsync(fixture, receiver);

        await using var db = fixture.CreateDbContext();
        var dueAt = (await db.ScheduledMessages.AsNoTracking().SingleAsync()).DueAt;
        // Each copy logs once its redelivery is stored or joined, after the job's update: both are in once two are.
        await Eventually.AssertAsync(() => Assert.Equal(2, Failures(LogLevel.Warning).Count + Failures(LogLevel.Information).Count));
        var scheduled = Assert.Single(Failures(LogLevel.Warning));
        Assert.Contains("failed transiently; redelivery 1 of 3 scheduled", scheduled.Message, StringComparison.Ordinal);
        var joined = Assert.Single(Failures(LogLevel.Information));
        Assert.Contains("failed transiently; joined redelivery 1 of 3, stored already by an earlier delivery of the command and due at", joined.Message, StringComparison.Ordinal);
        Assert.Contains(dueAt.ToString("O", CultureInfo.InvariantCulture)[..19], joined.Message, StringComparison.Ordinal);

        List<CapturedLogs.Entry> Failures(LogLevel level) =>
            [.. logs.Of(level, JobsCategory).Where(e =>
                e.Message.Contains(webhookId.ToString(), StringComparison.Ordinal) && e.Message.Contains("failed transiently", StringComparison.Ordinal))];
    }

    /// <summary>Gives every stored row a header name no AMQP publish can carry, makes it due and wakes the dispatchers.</summary>
    private async Task MakeUnpublishableAndDueAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(
            $"""
            UPDATE scheduled_messages SET headers = headers || jsonb_build_object(@name, 'x'), due_at = now() - interval '1 second';
            SELECT pg_notify('{RedeliveryStore.Channel}', '0');
            """,
            connection);
        command.Parameters.AddWithValue("name", new string('n', 300));
        await command.ExecuteNonQueryAsync();
    }
}
