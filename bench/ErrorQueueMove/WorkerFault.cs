using System.Globalization;
using System.Text;
using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using RabbitMQ.Client;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// Copies of the message in <c>Fixtures/worker-fault.json</c>, one dead-lettered by the worker: each
/// copy gets a message id and a job id of its own (in its headers and in its envelope, the same
/// lengths), its fault's input address names the benchmark's queue, and its fault time is now.
/// </summary>
internal sealed class WorkerFault
{
    private readonly string _contentType;
    private readonly string _messageId;
    private readonly string _jobId;
    private readonly Dictionary<string, object?> _headers;
    private readonly string _body;

    private WorkerFault(string contentType, string messageId, string jobId, Dictionary<string, object?> headers, string body) =>
        (_contentType, _messageId, _jobId, _headers, _body) = (contentType, messageId, jobId, headers, body);

    private static readonly Lazy<WorkerFault> Fixture = new(Load);

    /// <summary>The fixture, read once per process.</summary>
    public static WorkerFault Instance => Fixture.Value;

    private static WorkerFault Load()
    {
        using var fixture = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Fixtures", "worker-fault.json")));
        var root = fixture.RootElement;
        var headers = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var header in root.GetProperty("headers").EnumerateObject())
        {
            headers[header.Name] = header.Value.ValueKind == JsonValueKind.Number ? header.Value.GetInt64() : header.Value.GetString();
        }

        // Each copy writes fresh UUIDs over these two, in place: the copies keep the fixture's sizes.
        var messageId = root.GetProperty("messageId").GetString()!;
        var jobId = (string)headers[Contracts.JobHeaders.JobId]!;
        if (!Guid.TryParseExact(messageId, "D", out _) || !Guid.TryParseExact(jobId, "D", out _))
        {
            throw new InvalidDataException($"The fixture's message id and job id must be UUIDs: {messageId}, {jobId}");
        }

        return new WorkerFault(root.GetProperty("contentType").GetString()!, messageId, jobId, headers, root.GetProperty("body").GetString()!);
    }

    /// <summary>The body's size in bytes, the same for every copy.</summary>
    public int BodyBytes => Encoding.UTF8.GetByteCount(_body);

    public (BasicProperties Properties, byte[] Body) Copy(string queue, string? exceptionType)
    {
        var messageId = Guid.NewGuid().ToString("D");
        var jobId = Guid.NewGuid().ToString("D");
        var headers = new Dictionary<string, object?>(_headers, StringComparer.Ordinal)
        {
            [FaultHeaders.InputAddress] = $"rabbitmq://localhost/bench/{queue}",
            [FaultHeaders.Timestamp] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
            [Contracts.JobHeaders.JobId] = jobId,
        };
        if (exceptionType is not null)
        {
            headers[FaultHeaders.ExceptionType] = exceptionType;
        }

        var properties = new BasicProperties
        {
            MessageId = messageId,
            ContentType = _contentType,
            DeliveryMode = DeliveryModes.Persistent,
            Headers = headers,
        };
        return (properties, Encoding.UTF8.GetBytes(_body.Replace(_messageId, messageId, StringComparison.Ordinal).Replace(_jobId, jobId, StringComparison.Ordinal)));
    }
}
