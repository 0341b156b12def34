using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A worker killed outright mid-attempt leaves a short job queued with 0 attempts (the attempt's transaction rolls
/// back), so a cancel is accepted although the attempt may have reached the gateway; the broker then redelivers
/// the command, flagged redelivered, and the inbox acks it unrun. That flag is the only trace: the worker says so in
/// a warning and in the job's <c>lastError</c>. A cancelled job's command delivered for the first time stays
/// silent, and so does the lease inbox's (a long job's attempt is counted before it runs: killed, the job reads
/// running and refuses the cancel). The redelivered flag is the broker's own: the command is taken by a consumer
/// that closes its channel without acking it, as a killed worker's connection closes.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class CancelledCommandRedeliveryTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string TrackerCategory = "Conveyor.Worker.Jobs.JobTracker";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    public static TheoryData<string, int, bool> Inboxes => new()
    {
        // The single-message inbox, the batched one (group commit), the lease inbox (its batch size unused); each redelivered or not.
        { JobKinds.ChargePayment, 1, true },
        { JobKinds.ChargePayment, 1, false },
        { JobKinds.ChargePayment, 64, true },
        { JobKinds.ChargePayment, 64, false },
        { JobKinds.GenerateReport, 1, true },
        { JobKinds.GenerateReport, 1, false },
    };

    [Theory]
    [MemberData(nameof(Inboxes))]
    public async Task A_cancelled_jobs_command_is_acked_unrun_and_flagged_on_the_job_only_when_it_comes_back_redelivered_to_a_short_jobs_inbox(
        string kind, int inboxBatchSize, bool redelivered)
    {
        var settings = WorkerSettings.With().Override(
            ("Consumers:ChargePayment:InboxBatchSize", inboxBatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        // A worker declares the queues and leaves, so the command waits in its queue.
        await (await fixture.StartWorkerAsync(settings)).DisposeAsync();
        await using var api = await fixture.StartApiAsync();
        var key = Guid.NewGuid();
        var queued = await api.Client.AcceptJobAsync(kind, kind == JobKinds.ChargePayment ? JobRequests.ChargePayment(key) : JobRequests.GenerateReport(key));
        using (var cancel = await api.Client.CancelJobAsync(queued.JobId))
        {
            Assert.Equal(System.Net.HttpStatusCode.OK, cancel.StatusCode);
        }

        var messageId = redelivered ? await DeliverUnackedAsync(kind) : null;

        var logs = new CapturedLogs();
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));
        await fixture.AssertDrainedAsync(worker, kind);

        var job = await api.Client.GetJobAsync(queued.JobId);
        Assert.Equal((JobStatus.Cancelled, 0), (job.Status, job.Attempts));
        var warnings = logs.Of(LogLevel.Warning, TrackerCategory);
        if (redelivered && kind == JobKinds.ChargePayment)
        {
            Assert.NotNull(job.LastError);
            Assert.Contains("redelivered after the cancel", job.LastError, StringComparison.Ordinal);
            Assert.Contains(messageId!, job.LastError, StringComparison.Ordinal);
            var warning = Assert.Single(warnings);
            Assert.Contains($"{kind}/{key}", warning.Message, StringComparison.Ordinal);
            Assert.Contains(queued.JobId.ToString(), warning.Message, StringComparison.Ordinal);
            Assert.Contains(messageId!, warning.Message, StringComparison.Ordinal);
        }
        else
        {
            Assert.Null(job.LastError);
            Assert.Empty(warnings);
        }
    }

    /// <summary>
    /// Takes the queue's one message without acking it and closes the channel: the broker requeues it with its
    /// redelivered flag set, as it does for a worker killed while holding it. Checks the flag (leaving the message
    /// in the queue) and returns the message's id.
    /// </summary>
    private async Task<string> DeliverUnackedAsync(string queue)
    {
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-unacked");
        string messageId;
        await using (var holder = await connection.CreateChannelAsync())
        {
            var first = await holder.BasicGetAsync(queue, autoAck: false);
            Assert.NotNull(first);
            Assert.False(first.Redelivered);
            messageId = Guid.Parse(first.BasicProperties.MessageId!).ToString();
        }

        await using var check = await connection.CreateChannelAsync();
        var again = await check.BasicGetAsync(queue, autoAck: false);
        Assert.NotNull(again);
        Assert.True(again.Redelivered);
        await check.BasicNackAsync(again.DeliveryTag, multiple: false, requeue: true);
        return messageId;
    }
}
