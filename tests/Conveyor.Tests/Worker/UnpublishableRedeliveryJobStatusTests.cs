using System.Net;
using System.Text;
using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Api;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;
using RabbitMQ.Client;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A stored message that can never be published goes to its destination's <c>_error</c> queue
/// (<see cref="UnpublishableRedeliveryTests"/>), and the job waiting for it becomes dead-lettered with
/// the reason, in the transaction that deletes the row. Before, the job stayed <c>retry-scheduled</c>
/// (or <c>scheduled</c>) forever while its command sat in <c>_error</c>. The job is the one the row was
/// stored for, never one a header of the message names, and only while it still waits for that row.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class UnpublishableRedeliveryJobStatusTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string WebhookExchange = "Conveyor.Contracts.Webhooks:DeliverWebhook";
    private const string WebhookUrn = "urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook";

    /// <summary>Longer than AMQP allows a header name: no publish can carry it, a move to _error drops it.</summary>
    private static readonly string LongHeaderName = new('n', 300);

    private readonly string _queue = $"unpublishable-status-test-{Guid.NewGuid():N}";
    private IConnection _connection = null!;
    private IChannel _channel = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _connection = await fixture.AmqpFactory().CreateConnectionAsync();
        _channel = await _connection.CreateChannelAsync();
        await _channel.QueueDeclareAsync(_queue, durable: true, exclusive: false, autoDelete: false);
        await _channel.QueueDeclareAsync(_queue + BrokerPublisher.ErrorQueueSuffix, durable: true, exclusive: false, autoDelete: false);
    }

    public async Task DisposeAsync()
    {
        await _channel.QueueDeleteAsync(_queue);
        await _channel.QueueDeleteAsync(_queue + BrokerPublisher.ErrorQueueSuffix);
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
    }

    [Fact]
    public async Task Only_the_job_still_waiting_for_the_row_it_was_stored_for_is_dead_lettered()
    {
        var waiting = await AddJobAsync(JobStatus.RetryScheduled, attempts: 2);
        var succeeded = await AddJobAsync(JobStatus.Succeeded, attempts: 2);
        var cancelled = await AddJobAsync(JobStatus.Cancelled, attempts: 0);
        // Claimed by a newer delivery since its row was stored: running now, or failed again and waiting for another row.
        var running = await AddJobAsync(JobStatus.Running, attempts: 3);
        var movedOn = await AddJobAsync(JobStatus.RetryScheduled, attempts: 3);
        // Named only by the header of the rows: a header is a sender's claim, never which job a row is for.
        var named = await AddJobAsync(JobStatus.RetryScheduled, attempts: 1);

        var due = DateTimeOffset.UtcNow.AddSeconds(-5);
        var rows = new Dictionary<string, (Guid? JobId, int? Attempts)>();
        foreach (var (job, attempts) in new[] { (waiting, 2), (succeeded, 2), (cancelled, 0), (running, 2), (movedOn, 2) })
        {
            rows[await ScheduleAsync(due, job.Id, attempts, named.Id)] = (job.Id, attempts);
        }

        // Stored before rows named their job: moved as before, no job touched.
        rows[await ScheduleAsync(due, jobId: null, jobAttempts: null, named.Id)] = (null, null);

        await using (var publisher = new BrokerPublisher(Options.Create(fixture.RabbitOptions())))
        {
            using var dispatcher = new RedeliveryDispatcher(fixture.DbContextFactory(), publisher, Options.Create(new DispatcherOptions()),
                HostMeters.OwnJobMetrics(), TimeProvider.System, NullLogger<RedeliveryDispatcher>.Instance);
            await dispatcher.StartAsync(CancellationToken.None);
            try
            {
                await Eventually.AssertAsync(async () =>
                {
                    await using var db = fixture.CreateDbContext();
                    Assert.Equal(0, await db.ScheduledMessages.CountAsync());
                }, TimeSpan.FromSeconds(30));
            }
            finally
            {
                await dispatcher.StopAsync(CancellationToken.None);
            }
        }

        await using var read = fixture.CreateDbContext();
        var jobs = await read.Jobs.AsNoTracking().ToDictionaryAsync(j => j.Id);
        var deadLettered = jobs[waiting.Id];
        Assert.Equal(JobStatus.DeadLettered, deadLettered.Status);
        Assert.StartsWith("UnpublishableRedelivery: ", deadLettered.LastError, StringComparison.Ordinal);
        Assert.Contains("header name", deadLettered.LastError, StringComparison.Ordinal);
        Assert.Contains(_queue + BrokerPublisher.ErrorQueueSuffix, deadLettered.LastError, StringComparison.Ordinal);
        Assert.NotNull(deadLettered.FinishedAt);
        Assert.Null(deadLettered.NextAttemptAt);
        Assert.Equal(2, deadLettered.Attempts);

        foreach (var untouched in new[] { succeeded, cancelled, running, movedOn, named })
        {
            var now = jobs[untouched.Id];
            Assert.Equal((untouched.Status, untouched.Attempts, untouched.LastError, untouched.UpdatedAt.ToUnixTimeMilliseconds()),
                (now.Status, now.Attempts, now.LastError, now.UpdatedAt.ToUnixTimeMilliseconds()));
        }

        // Every row went to _error all the same; the copy of a row that names its job carries the job's own
        // id and attempts, and the kind of that job, whatever it has become since. The row of no job keeps
        // none of the job id, attempts and kind its sender claimed (its queue is no job's): the Api's
        // listing would show another job beside it, and a move by that job's id would take it along.
        var moved = await TakeAllAsync(_queue + BrokerPublisher.ErrorQueueSuffix);
        Assert.Equal(rows.Keys.Order(), moved.Select(m => m.BasicProperties.MessageId).Order());
        foreach (var copy in moved)
        {
            var (jobId, attempts) = rows[copy.BasicProperties.MessageId!];
            var headers = copy.BasicProperties.Headers!;
            Assert.Equal(jobId is null ? [] : [jobId.Value.ToString("D")], HeaderValues(headers, JobHeaders.JobId));
            Assert.Equal(attempts is { } count ? [count.ToString(System.Globalization.CultureInfo.InvariantCulture)] : [], HeaderValues(headers, "Conveyor-Attempts"));
            Assert.Equal(jobId is null ? [] : [JobKinds.ChargePayment], HeaderValues(headers, "Conveyor-Job-Kind"));
            // As DeadLetterHeadersFilter writes on every _error copy: the failed delivery was the one before
            // the redelivery stored (attempt 1), and its first failure is the time the worker stored.
            Assert.Equal("0", Assert.Single(HeaderValues(headers, "Conveyor-Redelivery-Attempt")));
            Assert.Equal(StoredFirstFailureAt, Assert.Single(HeaderValues(headers, "Conveyor-First-Failure-At")));
        }

        Assert.All(moved, m => Assert.Equal(
            _queue, ErrorQueueNames.OriginalQueueOf(Text(m.BasicProperties.Headers!["MT-Fault-InputAddress"]), "elsewhere_error")));
    }

    [Fact]
    public async Task A_redelivery_the_worker_stored_that_cannot_be_published_dead_letters_its_job_not_the_one_its_header_names()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.InternalServerError;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:RedeliveryMaxDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:KillSwitchTripPercent", "0")));
        await fixture.DeclareAsync("deliver-webhook_error");
        // Another job, waiting for a redelivery of its own, whose id the command claims.
        var other = await AddJobAsync(JobStatus.RetryScheduled, attempts: 1, kind: JobKinds.DeliverWebhook);
        var webhookId = Guid.NewGuid();
        await PublishWebhookAsync(webhookId, receiver.Url(), claimedJobId: other.Id);

        Job job = null!;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Kind == JobKinds.DeliverWebhook && j.BusinessKey == webhookId.ToString());
            Assert.Equal(JobStatus.RetryScheduled, job.Status);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));
        Assert.NotEqual(other.Id, job.Id);

        string? firstFailureAt;
        await using (var db = fixture.CreateDbContext())
        {
            var stored = await db.ScheduledMessages.AsNoTracking().SingleAsync();
            Assert.Equal((job.Id, job.Attempts, 1), (stored.JobId, stored.JobAttempts, stored.Attempt));
            firstFailureAt = JsonSerializer.Deserialize<Dictionary<string, string>>(stored.Headers)!["Conveyor-First-Failure-At"];
        }

        // As a row stored before the store bounded headers would be: it can never be published.
        await MakeUnpublishableAndDueAsync();

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var now = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == job.Id);
            Assert.Equal(JobStatus.DeadLettered, now.Status);
            Assert.Contains("header name", now.LastError, StringComparison.Ordinal);
            Assert.Contains("deliver-webhook_error", now.LastError, StringComparison.Ordinal);
            Assert.NotNull(now.FinishedAt);
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));

        await using (var db = fixture.CreateDbContext())
        {
            var untouched = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == other.Id);
            Assert.Equal((JobStatus.RetryScheduled, 1, (DateTimeOffset?)null), (untouched.Status, untouched.Attempts, untouched.FinishedAt));
        }

        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var moved = Assert.Single(await producer.TakeAllAsync("deliver-webhook_error"));
        Assert.Equal(job.Id.ToString("D"), moved.Header(JobHeaders.JobId));
        // As on every _error copy of a job: the attempts it had, which the Api's listing shows.
        Assert.Equal("1", moved.Header("Conveyor-Attempts"));
        // As the error pipe would have written had that first delivery been dead-lettered: no redelivery
        // yet (the stored one, attempt 1, never happened), and its first failure as the worker stored it.
        Assert.Equal("0", moved.Header("Conveyor-Redelivery-Attempt"));
        Assert.Equal(firstFailureAt, moved.Header("Conveyor-First-Failure-At"));
        AssertIdentifiesItsJob(moved, JobKinds.DeliverWebhook, "deliver-webhook", "Conveyor.Contracts.Webhooks.DeliverWebhook");
        Assert.Single(receiver.Deliveries);
    }

    [Fact]
    public async Task A_job_scheduled_with_runAt_whose_command_cannot_be_published_shows_dead_lettered_with_the_reason()
    {
        await using var worker = await fixture.StartWorkerAsync();
        await using var api = await fixture.StartApiAsync();
        await fixture.DeclareAsync("charge-payment_error");
        var accepted = await api.Client.AcceptJobAsync(
            JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));

        await using (var db = fixture.CreateDbContext())
        {
            var stored = await db.ScheduledMessages.AsNoTracking().SingleAsync();
            Assert.Equal((accepted.JobId, 0), (stored.JobId, stored.JobAttempts));
        }

        var beforeFailure = DateTimeOffset.UtcNow;
        await MakeUnpublishableAndDueAsync();

        JobDetails shown = null!;
        await Eventually.AssertAsync(async () =>
        {
            shown = await api.Client.GetJobAsync(accepted.JobId);
            Assert.Equal(JobStatus.DeadLettered, shown.Status);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));
        Assert.StartsWith("UnpublishableRedelivery: ", shown.LastError, StringComparison.Ordinal);
        Assert.Contains("charge-payment_error", shown.LastError, StringComparison.Ordinal);
        Assert.NotNull(shown.FinishedAt);
        Assert.Equal(0, shown.Attempts);

        // The Api's listing of the queue shows the copy as it shows any dead-lettered job's command: its
        // kind, and the queue it came from as its MT-Fault-InputAddress names it.
        var listed = Assert.Single((await api.Client.GetJsonAsync("/api/error-queues/charge-payment_error/messages")).GetProperty("messages").EnumerateArray());
        Assert.Equal(accepted.JobId.ToString("D"), listed.GetProperty("jobId").GetString());
        Assert.Equal(JobKinds.ChargePayment, listed.GetProperty("jobKind").GetString());
        Assert.Equal("charge-payment", listed.GetProperty("originalQueue").GetString());
        Assert.Equal("Conveyor.Contracts.Payments.ChargePayment", listed.GetProperty("messageType").GetString());
        Assert.Equal(0, listed.GetProperty("attempts").GetInt32());

        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var moved = Assert.Single(await producer.TakeAllAsync("charge-payment_error"));
        Assert.Equal(accepted.JobId.ToString("D"), moved.Header(JobHeaders.JobId));
        Assert.Equal("0", moved.Header("Conveyor-Attempts"));
        // A first delivery dead-lettered: no redelivery, and it failed first when its command could not be published.
        Assert.Equal("0", moved.Header("Conveyor-Redelivery-Attempt"));
        var failedAt = DateTimeOffset.Parse(moved.Header("Conveyor-First-Failure-At")!, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(failedAt, beforeFailure.AddSeconds(-5), DateTimeOffset.UtcNow.AddSeconds(5));
        AssertIdentifiesItsJob(moved, JobKinds.ChargePayment, "charge-payment", "Conveyor.Contracts.Payments.ChargePayment");
    }

    /// <summary>
    /// The headers that say what a dead-lettered copy is and where it failed, as the error pipe writes them
    /// on every other <c>_error</c> copy of a job: its kind, the queue it was on its way to (the target of
    /// an operator's move), its contract, and the host that gave up on it.
    /// </summary>
    private static void AssertIdentifiesItsJob(RawAmqpProducer.TakenMessage moved, string kind, string queue, string messageType)
    {
        Assert.Equal(kind, moved.Header("Conveyor-Job-Kind"));
        var inputAddress = moved.Header("MT-Fault-InputAddress");
        Assert.StartsWith("rabbitmq://", inputAddress, StringComparison.Ordinal);
        // Read as the Api reads it: the queue comes from the address, not from the error queue's name.
        Assert.Equal(queue, ErrorQueueNames.OriginalQueueOf(inputAddress, "elsewhere_error"));
        Assert.Equal(messageType, moved.Header("MT-Fault-MessageType"));
        Assert.Equal(Environment.MachineName, moved.Header("MT-Host-MachineName"));
        Assert.Equal(Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture), moved.Header("MT-Host-ProcessId"));
        Assert.Equal("fault", moved.Header("MT-Reason"));
    }

    private async Task<Job> AddJobAsync(string status, int attempts, string kind = JobKinds.ChargePayment)
    {
        var created = DateTimeOffset.UtcNow.AddMinutes(-5);
        var job = new Job
        {
            Id = Guid.CreateVersion7(),
            Kind = kind,
            BusinessKey = Guid.NewGuid().ToString(),
            Status = status,
            Attempts = attempts,
            LastError = attempts > 0 && status != JobStatus.Succeeded ? "HttpRequestException: 503" : null,
            CreatedAt = created,
            UpdatedAt = created,
            FinishedAt = status is JobStatus.Succeeded or JobStatus.Cancelled ? created : null,
            NextAttemptAt = status == JobStatus.RetryScheduled ? created.AddHours(1) : null,
        };
        await using var db = fixture.CreateDbContext();
        db.Jobs.Add(job);
        await db.SaveChangesAsync();
        return job;
    }

    /// <summary>The first failure time the stored rows carry, as a worker that stored a redelivery writes it.</summary>
    private const string StoredFirstFailureAt = "2026-01-02T03:04:05.0000000+00:00";

    /// <summary>The values of every header named <paramref name="name"/> in any case.</summary>
    private static string?[] HeaderValues(IDictionary<string, object?> headers, string name) =>
        [.. headers.Where(h => string.Equals(h.Key, name, StringComparison.OrdinalIgnoreCase)).Select(h => Text(h.Value))];

    /// <summary>
    /// Stores a first redelivery of a command to the test's queue whose sender claimed
    /// <paramref name="claimedJobId"/>, its attempts and another kind (one of them in another case); its message id.
    /// </summary>
    private async Task<string> ScheduleAsync(DateTimeOffset dueAt, Guid? jobId, int? jobAttempts, Guid claimedJobId)
    {
        var messageId = Guid.NewGuid().ToString();
        await using var db = fixture.CreateDbContext();
        db.ScheduledMessages.Add(new ScheduledMessage
        {
            DedupeKey = messageId,
            Destination = _queue,
            DueAt = dueAt,
            Attempt = 1,
            ContentType = "application/json",
            MessageId = messageId,
            Headers = JsonSerializer.Serialize(new Dictionary<string, string>
            {
                [LongHeaderName] = "x",
                [JobHeaders.JobId] = claimedJobId.ToString("D"),
                ["conveyor-attempts"] = "7",
                ["Conveyor-Job-Kind"] = JobKinds.DeliverWebhook,
                ["Conveyor-Redelivery-Attempt"] = "1",
                ["Conveyor-First-Failure-At"] = StoredFirstFailureAt,
            }),
            Body = Encoding.UTF8.GetBytes("{}"),
            CreatedAt = DateTimeOffset.UtcNow,
            JobId = jobId,
            JobAttempts = jobAttempts,
        });
        await db.SaveChangesAsync();
        return messageId;
    }

    /// <summary>Gives every stored row a header no AMQP publish can carry, makes it due and wakes the dispatchers.</summary>
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
        command.Parameters.AddWithValue("name", LongHeaderName);
        await command.ExecuteNonQueryAsync();
    }

    private async Task<List<BasicGetResult>> TakeAllAsync(string queue)
    {
        var taken = new List<BasicGetResult>();
        while (await _channel.BasicGetAsync(queue, autoAck: true) is { } message)
        {
            taken.Add(message);
        }

        return taken;
    }

    /// <summary>A webhook command from a raw producer that claims <paramref name="claimedJobId"/> as its job.</summary>
    private async Task PublishWebhookAsync(Guid webhookId, Uri url, Guid claimedJobId)
    {
        var messageId = Guid.NewGuid();
        var envelope = new
        {
            messageId,
            messageType = new[] { WebhookUrn },
            headers = new Dictionary<string, string> { [JobHeaders.JobId] = claimedJobId.ToString("D") },
            message = new { webhookId, url, eventType = "invoice.created", payload = new { invoice = 7 } },
        };
        await using var channel = await _connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        var properties = new BasicProperties
        {
            ContentType = RawAmqpProducer.EnvelopeContentType,
            MessageId = messageId.ToString(),
            DeliveryMode = DeliveryModes.Persistent,
            Headers = new Dictionary<string, object?> { [JobHeaders.JobId] = claimedJobId.ToString("D") },
        };
        await channel.BasicPublishAsync(WebhookExchange, string.Empty, mandatory: false, properties,
            JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web));
    }

    private static string? Text(object? value) => value is byte[] bytes ? Encoding.UTF8.GetString(bytes) : value?.ToString();
}
