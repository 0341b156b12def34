using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Conveyor.ServiceDefaults;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using RabbitMQ.Client;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>API keys, clients and broker access shared by the error-queue tests.</summary>
public static class ErrorQueueKit
{
    public const string AdminKey = "test-admin-key-0123456789abcdef";
    public const string AdminName = "ops-admin";
    public const string ReaderKey = "test-reader-key-0123456789abcdef";
    public const string ReaderName = "jobs-reader";

    public const string ChargeQueue = "charge-payment";
    public const string ChargeErrors = "charge-payment_error";

    /// <summary>Api settings with an admin key and a key without the admin scope.</summary>
    public static Dictionary<string, string?> ApiSettings(int? maxMessagesPerSecond = null)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:0:Name"] = AdminName,
            ["Auth:ApiKeys:0:Key"] = AdminKey,
            ["Auth:ApiKeys:0:Scopes"] = "admin",
            ["Auth:ApiKeys:1:Name"] = ReaderName,
            ["Auth:ApiKeys:1:Key"] = ReaderKey,
            ["Auth:ApiKeys:1:Scopes:0"] = "jobs:read",
            ["Auth:ApiKeys:1:Scopes:1"] = "jobs:publish",
            // Small windows, so that tests of a few hundred messages exercise channel rotation.
            ["ErrorQueues:Prefetch"] = "50",
            ["ErrorQueues:IdleCheckMilliseconds"] = "500",
        };
        if (maxMessagesPerSecond is { } rate)
        {
            settings["ErrorQueues:MaxMessagesPerSecond"] = rate.ToString(CultureInfo.InvariantCulture);
        }

        return settings;
    }

    public static HttpClient Client(Uri baseAddress, string? key = AdminKey)
    {
        var client = new HttpClient { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(60) };
        if (key is not null)
        {
            client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        }

        return client;
    }

    public static async Task ClearOperationsAsync(ConveyorFixture fixture)
    {
        await using var db = fixture.CreateDbContext();
        await db.Database.ExecuteSqlRawAsync("TRUNCATE error_queue_operations");
    }

    public static Task<HttpResponseMessage> PostJsonAsync(this HttpClient client, string path, object body) =>
        client.PostAsJsonAsync(new Uri(path, UriKind.Relative), body);

    public static async Task<JsonElement> JsonAsync(this HttpResponseMessage response)
    {
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(response.IsSuccessStatusCode, $"{(int)response.StatusCode}: {text}");
        return JsonDocument.Parse(text).RootElement.Clone();
    }

    public static async Task<JsonElement> GetJsonAsync(this HttpClient client, string path)
    {
        using var response = await client.GetAsync(new Uri(path, UriKind.Relative));
        return await response.JsonAsync();
    }

    /// <summary>Starts a move or purge and waits until it has ended; returns the operation.</summary>
    public static async Task<JsonElement> RunOperationAsync(this HttpClient client, string path, object body, TimeSpan? timeout = null)
    {
        using var response = await client.PostJsonAsync(path, body);
        var accepted = await response.JsonAsync();
        Assert.Equal(202, (int)response.StatusCode);
        return await client.WaitForOperationAsync(accepted.GetProperty("operationId").GetGuid(), timeout);
    }

    public static async Task<JsonElement> WaitForOperationAsync(this HttpClient client, Guid id, TimeSpan? timeout = null)
    {
        JsonElement operation = default;
        await Eventually.AssertAsync(async () =>
        {
            operation = await client.GetJsonAsync($"/api/operations/{id}");
            Assert.NotEqual("running", operation.GetProperty("state").GetString());
        }, timeout);
        return operation;
    }

    public static async Task<IReadOnlySet<string>> ErrorFieldsAsync(this HttpResponseMessage response)
    {
        Assert.Equal(400, (int)response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        return problem.GetProperty("errors").EnumerateObject().Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
    }
}

/// <summary>A message as a test put it into, or read it from, a queue.</summary>
public sealed record QueuedMessage(string? MessageId, IReadOnlyDictionary<string, string?> Headers, string Body)
{
    public string? Header(string name) => Headers.GetValueOrDefault(name);
}

/// <summary>
/// Direct AMQP access for tests: puts dead-lettered charges into <c>charge-payment_error</c> with the
/// headers MassTransit and the worker write (seen on real dead-letters), and reads queues in order
/// without changing them.
/// </summary>
public sealed class TestBroker : IAsyncDisposable
{
    private readonly IConnection _connection;
    private readonly IChannel _channel;

    private TestBroker(IConnection connection, IChannel channel)
    {
        _connection = connection;
        _channel = channel;
    }

    private static Dictionary<string, object?>? QueueArguments(string queue) => new RabbitMqOptions().JobQueueArguments(queue);

    /// <param name="virtualHost">Another vhost than the run's (a scratch vhost).</param>
    public static async Task<TestBroker> ConnectAsync(ConveyorFixture fixture, string? virtualHost = null)
    {
        var connection = await fixture.AmqpFactory(virtualHost).CreateConnectionAsync("conveyor-tests-error-queues");
        var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        var broker = new TestBroker(connection, channel);
        // Declared as the worker declares them (durable classic queues, lazy by default; MassTransit
        // gives the _error queue the job queue's arguments).
        foreach (var queue in new[] { ErrorQueueKit.ChargeQueue, ErrorQueueKit.ChargeErrors })
        {
            await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, QueueArguments(queue));
        }

        return broker;
    }

    public async Task DeclareAsync(string queue) =>
        await _channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, QueueArguments(queue));

    /// <summary>Deletes a queue a test declared under a name of its own, with its messages.</summary>
    public async Task DeleteAsync(string queue) => await _channel.QueueDeleteAsync(queue);

    /// <summary>A charge that failed in <c>charge-payment</c>, as MassTransit dead-letters it.</summary>
    /// <param name="messageId">The AMQP message_id, as another client may set it; by default the envelope's id.</param>
    /// <param name="bodyPadding">Characters added to the account id, for a body that large.</param>
    public async Task<Guid> DeadLetterChargeAsync(
        string exceptionType,
        string exceptionMessage,
        DateTimeOffset? faultedAt = null,
        Guid? paymentId = null,
        string queue = ErrorQueueKit.ChargeErrors,
        IDictionary<string, object?>? extraHeaders = null,
        string? messageId = null,
        int bodyPadding = 0)
    {
        var payment = paymentId ?? Guid.NewGuid();
        var envelopeId = Guid.NewGuid();
        var envelope = new
        {
            messageId = envelopeId,
            conversationId = Guid.NewGuid(),
            destinationAddress = "rabbitmq://127.0.0.1/test/Conveyor.Contracts.Payments:ChargePayment",
            messageType = new[] { "urn:message:Conveyor.Contracts.Payments:ChargePayment" },
            message = new { paymentId = payment, accountId = "acct-eq" + new string('x', bodyPadding), amountMinor = 1000, currency = "EUR" },
            sentTime = DateTimeOffset.UtcNow,
            headers = new Dictionary<string, object>(),
        };
        var headers = new Dictionary<string, object?>
        {
            ["MT-Reason"] = "fault",
            ["MT-Fault-ExceptionType"] = exceptionType,
            ["MT-Fault-InputAddress"] = $"rabbitmq://127.0.0.1/test/{ErrorQueueKit.ChargeQueue}",
            ["MT-Fault-Message"] = exceptionMessage,
            ["MT-Fault-Timestamp"] = (faultedAt ?? DateTimeOffset.UtcNow).UtcDateTime.ToString("O", CultureInfo.InvariantCulture),
            ["MT-Fault-StackTrace"] = "   at Conveyor.Worker.Payments.ChargePaymentConsumer.Consume(ConsumeContext`1 context)",
            ["MT-Fault-ConsumerType"] = "Conveyor.Worker.Payments.ChargePaymentConsumer",
            ["MT-Fault-MessageType"] = "Conveyor.Contracts.Payments.ChargePayment",
            ["Conveyor-First-Failure-At"] = (faultedAt ?? DateTimeOffset.UtcNow).ToString("O", CultureInfo.InvariantCulture),
            ["Conveyor-Redelivery-Attempt"] = "0",
            ["Conveyor-Job-Kind"] = "charge-payment",
            ["Conveyor-Attempts"] = "1",
            ["Conveyor-Dead-Letter-Reason"] = "permanent failure; not retried",
        };
        foreach (var (name, value) in extraHeaders ?? new Dictionary<string, object?>())
        {
            headers[name] = value;
        }

        var properties = new BasicProperties
        {
            MessageId = messageId ?? envelopeId.ToString(),
            ContentType = "application/vnd.masstransit+json",
            DeliveryMode = DeliveryModes.Persistent,
            Headers = headers,
        };
        await _channel.BasicPublishAsync(string.Empty, queue, mandatory: true, properties, JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web));
        return envelopeId;
    }

    /// <summary>A message as another client may have put it into a queue: these properties and this body, nothing added.</summary>
    public async Task PublishAsync(string queue, BasicProperties properties, byte[] body) =>
        await _channel.BasicPublishAsync(string.Empty, queue, mandatory: true, properties, body);

    /// <summary>Ready messages (exact, unlike the management API's sampled counters).</summary>
    public async Task<uint> CountAsync(string queue) => (await _channel.QueueDeclarePassiveAsync(queue)).MessageCount;

    /// <summary>Every message of a queue in order; all are released again with requeue, keeping their places.</summary>
    public async Task<IReadOnlyList<QueuedMessage>> ReadAllAsync(string queue)
    {
        await using var reader = await _connection.CreateChannelAsync();
        var messages = new List<QueuedMessage>();
        while (await reader.BasicGetAsync(queue, autoAck: false) is { } result)
        {
            var headers = (result.BasicProperties.Headers ?? new Dictionary<string, object?>()).ToDictionary(
                h => h.Key, h => h.Value is byte[] bytes ? Encoding.UTF8.GetString(bytes) : h.Value?.ToString(), StringComparer.Ordinal);
            messages.Add(new QueuedMessage(result.BasicProperties.MessageId, headers, Encoding.UTF8.GetString(result.Body.Span)));
        }

        if (messages.Count > 0)
        {
            await reader.BasicNackAsync(0, multiple: true, requeue: true);
        }

        return messages;
    }

    /// <summary>The message ids of a queue, in order.</summary>
    public async Task<IReadOnlyList<string?>> IdsAsync(string queue) => [.. (await ReadAllAsync(queue)).Select(m => m.MessageId)];

    public async ValueTask DisposeAsync()
    {
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
    }
}
