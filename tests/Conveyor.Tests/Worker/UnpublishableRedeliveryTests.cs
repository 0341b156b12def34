using System.Net;
using System.Text;
using System.Text.Json;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A stored redelivery that cannot be published as it is never holds back the others: oversized
/// headers are dropped (and named) so the copy fits in a frame, a row that can never be published is
/// moved to its destination's <c>_error</c> queue with the reason, and none is lost or published in a
/// loop. Before, one such row failed its whole batch, and the dispatcher retried that batch forever.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class UnpublishableRedeliveryTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string WebhookExchange = "Conveyor.Contracts.Webhooks:DeliverWebhook";
    private const string WebhookUrn = "urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook";

    /// <summary>Where the dispatcher tests' rows go: a queue of their own and its error queue, removed afterwards.</summary>
    private readonly string _queue = $"unpublishable-test-{Guid.NewGuid():N}";
    private IConnection _connection = null!;
    private IChannel _channel = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _connection = await fixture.AmqpFactory().CreateConnectionAsync();
        _channel = await _connection.CreateChannelAsync();
        await _channel.QueueDeclareAsync(_queue, durable: true, exclusive: false, autoDelete: false);
    }

    public async Task DisposeAsync()
    {
        await _channel.QueueDeleteAsync(_queue);
        await _channel.QueueDeleteAsync(_queue + BrokerPublisher.ErrorQueueSuffix);
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
    }

    [Fact]
    public async Task Rows_that_cannot_be_published_as_stored_neither_block_the_others_nor_loop()
    {
        await _channel.QueueDeclareAsync(_queue + BrokerPublisher.ErrorQueueSuffix, durable: true, exclusive: false, autoDelete: false);
        var due = DateTimeOffset.UtcNow.AddSeconds(-5);
        var first = await ScheduleAsync(due, "{}");
        // Stored before the store bounded headers: over the frame as it is.
        var oversized = await ScheduleAsync(due, JsonSerializer.Serialize(new Dictionary<string, string>
        {
            ["X-Pad"] = new string('p', 131_000),
            ["Conveyor-Redelivery-Attempt"] = "1",
        }));
        // Headers that are no map of strings: no publish can be made of them.
        var unreadable = await ScheduleAsync(due, """{"X-Count": 5}""");
        var last = await ScheduleAsync(due, "{}");

        await using var publisher = new BrokerPublisher(Options.Create(fixture.RabbitOptions()));
        using var dispatcher = Dispatcher(publisher);
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

        var published = await TakeAllAsync(_queue);
        Assert.Equal(new[] { first, oversized, last }.Order(), published.Select(m => m.BasicProperties.MessageId).Order());
        var trimmed = published.Single(m => m.BasicProperties.MessageId == oversized).BasicProperties.Headers!;
        Assert.False(trimmed.ContainsKey("X-Pad"));
        Assert.Equal("1", Text(trimmed["Conveyor-Redelivery-Attempt"]));
        Assert.StartsWith("X-Pad (", Text(trimmed["Conveyor-Dropped-Headers"]), StringComparison.Ordinal);

        var moved = Assert.Single(await TakeAllAsync(_queue + BrokerPublisher.ErrorQueueSuffix));
        Assert.Equal(unreadable, moved.BasicProperties.MessageId);
        Assert.Contains("unreadable", Text(moved.BasicProperties.Headers!["Conveyor-Dead-Letter-Reason"]), StringComparison.Ordinal);
        Assert.Equal("{}", Encoding.UTF8.GetString(moved.Body.Span));
    }

    [Fact]
    public async Task A_row_that_cannot_be_published_while_its_error_queue_does_not_exist_is_kept_for_later()
    {
        var due = DateTimeOffset.UtcNow.AddSeconds(-5);
        var unreadable = await ScheduleAsync(due, """{"X-Count": 5}""");
        var other = await ScheduleAsync(due, "{}");

        await using var publisher = new BrokerPublisher(Options.Create(fixture.RabbitOptions()));
        using var dispatcher = Dispatcher(publisher);
        var started = DateTimeOffset.UtcNow;
        await dispatcher.StartAsync(CancellationToken.None);
        try
        {
            await Eventually.AssertAsync(async () =>
            {
                await using var db = fixture.CreateDbContext();
                var kept = await db.ScheduledMessages.AsNoTracking().SingleAsync();
                Assert.Equal(unreadable, kept.MessageId);
                Assert.True(kept.DueAt > started, "the row was not given a later try");
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            await dispatcher.StopAsync(CancellationToken.None);
        }

        Assert.Equal([other], (await TakeAllAsync(_queue)).Select(m => m.BasicProperties.MessageId));
    }

    [Fact]
    public async Task A_redelivery_whose_headers_grow_past_the_frame_when_stored_is_stored_without_them_and_others_still_flow()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.InternalServerError;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "1"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "500"),
            ("Consumers:DeliverWebhook:RedeliveryMaxDelayMilliseconds", "1000"),
            ("Consumers:DeliverWebhook:KillSwitchTripPercent", "0")));
        await fixture.DeclareAsync("deliver-webhook_error");
        var padded = Guid.NewGuid();
        var plain = Guid.NewGuid();

        // 44,000 bytes that are no UTF-8: under the header limit as received, but each comes back as
        // three when stored, 132,000 bytes, over the frame.
        var raw = Enumerable.Repeat((byte)0xFF, 44_000).ToArray();
        await PublishWebhookAsync(padded, receiver.Url(), new Dictionary<string, object?> { ["X-Raw"] = raw });
        await PublishWebhookAsync(plain, receiver.Url(), headers: null);

        // Each failed, was redelivered once, failed again, and went to _error.
        var error = new List<RawAmqpProducer.TakenMessage>();
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        await Eventually.AssertAsync(async () =>
        {
            error.AddRange(await producer.TakeAllAsync("deliver-webhook_error"));
            Assert.Equal(2, error.Count);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));

        var paddedCopy = error.Single(m => Encoding.UTF8.GetString(m.Body).Contains(padded.ToString(), StringComparison.Ordinal));
        Assert.Equal("1", paddedCopy.Header("Conveyor-Redelivery-Attempt"));
        Assert.Null(paddedCopy.Header("X-Raw"));
        Assert.StartsWith("X-Raw (", paddedCopy.Header("Conveyor-Dropped-Headers"), StringComparison.Ordinal);
        var plainCopy = error.Single(m => Encoding.UTF8.GetString(m.Body).Contains(plain.ToString(), StringComparison.Ordinal));
        Assert.Equal("1", plainCopy.Header("Conveyor-Redelivery-Attempt"));
        Assert.Equal(4, receiver.Deliveries.Count);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }

    private RedeliveryDispatcher Dispatcher(BrokerPublisher publisher) =>
        new(fixture.DbContextFactory(), publisher, Options.Create(new DispatcherOptions()), HostMeters.OwnJobMetrics(), TimeProvider.System,
            NullLogger<RedeliveryDispatcher>.Instance);

    private async Task<string> ScheduleAsync(DateTimeOffset dueAt, string headersJson)
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
            Headers = headersJson,
            Body = Encoding.UTF8.GetBytes("{}"),
            CreatedAt = DateTimeOffset.UtcNow,
        });
        await db.SaveChangesAsync();
        return messageId;
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

    /// <summary>A webhook command as a raw AMQP producer sends it, with headers of any AMQP type (bytes, here).</summary>
    private async Task PublishWebhookAsync(Guid webhookId, Uri url, IDictionary<string, object?>? headers)
    {
        var messageId = Guid.NewGuid();
        var envelope = new
        {
            messageId,
            messageType = new[] { WebhookUrn },
            message = new { webhookId, url, eventType = "invoice.created", payload = new { invoice = 7 } },
        };
        await using var channel = await _connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        var properties = new BasicProperties
        {
            ContentType = RawAmqpProducer.EnvelopeContentType,
            MessageId = messageId.ToString(),
            DeliveryMode = DeliveryModes.Persistent,
            Headers = headers,
        };
        await channel.BasicPublishAsync(WebhookExchange, string.Empty, mandatory: false, properties,
            JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web));
    }

    private static string? Text(object? value) => value is byte[] bytes ? Encoding.UTF8.GetString(bytes) : value?.ToString();
}
