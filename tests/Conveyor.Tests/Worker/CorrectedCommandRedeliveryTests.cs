using System.Globalization;
using System.Net;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A job whose first command failed transiently waits for that command's stored redelivery; a second
/// copy of the command (a producer's repeated publish) then fails for good and dead-letters the job,
/// which leaves the stored row waiting. A corrected command under the same key may take the
/// dead-lettered job over (ADR 0011). When its first delivery fails transiently too, it is at the same
/// redelivery count as the waiting row. Before, both were stored under one dedupe key: the corrected
/// command was acked with nothing stored, the first command's row was adopted as the job's latest
/// attempt, and the corrected command was lost (what came back was the first command, a conflict with
/// the job the correction had taken over). Only copies of one command fold into one row.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class CorrectedCommandRedeliveryTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "deliver-webhook";
    private const string ConflictType = "Conveyor.Worker.Failures.IdempotencyConflictException";

    private static readonly TimeSpan WaitTimeout = TimeSpan.FromSeconds(45);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(1)]
    [InlineData(16)]
    public async Task A_corrected_command_failing_at_the_redelivery_count_of_the_first_commands_waiting_row_is_stored_and_redelivered_itself(int inboxBatchSize)
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:InboxBatchSize", inboxBatchSize.ToString(CultureInfo.InvariantCulture)),
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:RedeliveryMaxDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:RedeliveryJitter", "0.5"),
            ("Consumers:DeliverWebhook:KillSwitchTripPercent", "0")));
        await fixture.DeclareAsync(Queue + "_error");
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var first = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "invoice.created",
            Payload = JsonSerializer.SerializeToElement(new { invoice = 7 }),
        };
        var corrected = first with { Payload = JsonSerializer.SerializeToElement(new { invoice = 8 }) };
        var key = first.WebhookId.ToString();

        await publisher.PublishAsync(first, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.RetryScheduled, attempts: 1, WaitTimeout);
        // A repeated publish of the same command, refused for good by the receiver: the job is
        // dead-lettered while the first copy's redelivery still waits.
        receiver.AnswerWith = HttpStatusCode.BadRequest;
        await publisher.PublishAsync(first, Guid.NewGuid());
        await fixture.WaitForJobAsync(key, JobStatus.DeadLettered, attempts: 2, WaitTimeout);
        // The corrected command takes the job over and fails transiently on its first delivery, as the
        // first command's copy did.
        receiver.AnswerWith = HttpStatusCode.ServiceUnavailable;
        await publisher.PublishAsync(corrected, Guid.NewGuid());
        var job = await fixture.WaitForJobAsync(key, JobStatus.RetryScheduled, attempts: 3, WaitTimeout);
        Assert.Equal(PayloadFingerprint.Of(corrected), job.PayloadHash);

        // Its own copy is stored, and the job waits for that row; the first command's row is left as it was.
        await using (var db = fixture.CreateDbContext())
        {
            var rows = await db.ScheduledMessages.AsNoTracking().ToListAsync();
            Assert.Equal(2, rows.Count);
            var correction = Assert.Single(rows, r => InvoiceOf(r.Body) == 8);
            var stale = Assert.Single(rows, r => InvoiceOf(r.Body) == 7);
            Assert.Equal((job.Id, 3), (correction.JobId, correction.JobAttempts));
            Assert.Equal(correction.DueAt.ToUnixTimeMilliseconds(), job.NextAttemptAt?.ToUnixTimeMilliseconds());
            Assert.Equal((job.Id, 1), (stale.JobId, stale.JobAttempts));
        }

        // The first command's row comes back first: it meets the job the correction took over, a conflict
        // that goes to _error and leaves the job waiting for the correction's row.
        receiver.AnswerWith = null;
        await MakeDueAsync(invoice: 7);
        await Eventually.AssertAsync(async () => Assert.Equal(2u, await fixture.ReadyAsync(Queue + "_error")),
            () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));
        await using (var amqp = await RawAmqpProducer.ConnectAsync(fixture))
        {
            var dead = await amqp.TakeAllAsync(Queue + "_error");
            var conflict = Assert.Single(dead, d => d.Header("MT-Fault-ExceptionType") == ConflictType);
            Assert.Equal(7, InvoiceOf(conflict.Body));
        }

        var waiting = await fixture.WaitForJobAsync(key, JobStatus.RetryScheduled, attempts: 3, WaitTimeout);
        Assert.Equal(job.NextAttemptAt, waiting.NextAttemptAt);

        // The correction's row then delivers the corrected webhook.
        await MakeDueAsync(invoice: 8);
        await fixture.WaitForJobAsync(key, JobStatus.Succeeded, attempts: 4, WaitTimeout);
        await fixture.AssertDrainedAsync(worker, Queue);
        Assert.Equal([7, 7, 8, 8], receiver.Deliveries.Select(d => JsonDocument.Parse(d.Body).RootElement.GetProperty("invoice").GetInt32()));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }
    }

    /// <summary>The webhook payload's invoice number in a stored or dead-lettered MassTransit envelope.</summary>
    private static int InvoiceOf(byte[] envelope)
    {
        using var document = JsonDocument.Parse(envelope);
        return document.RootElement.GetProperty("message").GetProperty("payload").GetProperty("invoice").GetInt32();
    }

    /// <summary>Makes the stored copy of the command with <paramref name="invoice"/> due and wakes the dispatchers.</summary>
    private async Task MakeDueAsync(int invoice)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(
            $"""
            UPDATE scheduled_messages SET due_at = now() - interval '1 second'
             WHERE (convert_from(body, 'UTF8')::jsonb -> 'message' -> 'payload' ->> 'invoice')::int = @invoice;
            SELECT pg_notify('{RedeliveryStore.Channel}', '0');
            """,
            connection);
        command.Parameters.AddWithValue("invoice", invoice);
        await command.ExecuteNonQueryAsync();
    }
}
