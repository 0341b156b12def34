using Conveyor.Contracts;
using Conveyor.Storage.Redelivery;
using MassTransit.Logging;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Conveyor.Api.Jobs;

/// <summary>
/// A job submitted with <c>runAt</c> waits in <c>scheduled_messages</c>, the store the worker's
/// redelivery dispatcher publishes from: its command is stored as the MassTransit JSON envelope a
/// publish would have produced, addressed to the kind's queue, due at <c>runAt</c>.
/// </summary>
internal static class ScheduledJobs
{
    public const string EnvelopeContentType = "application/vnd.masstransit+json";

    /// <summary>The dispatchers' LISTEN channel (the worker's <c>RedeliveryStore.Channel</c>).</summary>
    public const string NotifyChannel = "conveyor_scheduled";

    private static readonly JsonSerializerOptions EnvelopeJson = new(JsonSerializerDefaults.Web)
    {
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>The row's key: one scheduled publish per job, found again to cancel it.</summary>
    public static string DedupeKey(Guid jobId) => $"{ScheduledMessage.ScheduledJobKeyPrefix}{jobId:D}";

    public static ScheduledMessage ToScheduledMessage(JobRequest request, Guid jobId, DateTimeOffset runAt, DateTimeOffset now)
    {
        var messageId = Guid.NewGuid();
        return new ScheduledMessage
        {
            DedupeKey = DedupeKey(jobId),
            // Job queues are named after their kind; the dispatcher publishes through the default exchange.
            Destination = request.Kind,
            DueAt = runAt,
            Attempt = 0,
            ContentType = EnvelopeContentType,
            MessageId = messageId.ToString("D"),
            // Also a transport header, as on a job published at once, for whoever inspects the queue.
            Headers = JsonSerializer.Serialize(StoredHeaders(jobId)),
            // Sent when due: the command is released into its queue then, and a worker's measure of how
            // long a job waited in its queue (conveyor.jobs.wait) starts there, not at the submission.
            Body = request.ToEnvelope(messageId, jobId, runAt),
            CreatedAt = now,
            // The row this command runs, inserted in the same transaction with no attempts yet: should
            // the command never be publishable, the dispatcher dead-letters this job, and only while no
            // delivery has claimed it since.
            JobId = jobId,
            JobAttempts = 0,
        };
    }

    /// <summary>
    /// The transport headers the dispatcher publishes the command with: its job id and, when the request is
    /// traced, the request's span as MassTransit's parent header (which its receive reads from the transport
    /// headers), so the job's consume joins the submission's trace, as that of a job published at once does.
    /// </summary>
    private static Dictionary<string, string> StoredHeaders(Guid jobId)
    {
        var headers = new Dictionary<string, string> { [JobHeaders.JobId] = jobId.ToString("D") };
        if (Activity.Current is { IdFormat: ActivityIdFormat.W3C, Id: { } parent })
        {
            headers[DiagnosticHeaders.ActivityId] = parent;
        }

        return headers;
    }

    /// <summary>
    /// The envelope MassTransit reads: its <c>headers</c> become the consume context's headers, where
    /// the worker looks for the job id.
    /// </summary>
    public static byte[] Envelope<TCommand>(TCommand command, string messageUrn, Guid messageId, Guid jobId, DateTimeOffset sentTime)
        where TCommand : class =>
        JsonSerializer.SerializeToUtf8Bytes(
            new MassTransitEnvelope<TCommand>(
                messageId,
                [messageUrn],
                sentTime,
                new Dictionary<string, string> { [JobHeaders.JobId] = jobId.ToString("D") },
                command),
            EnvelopeJson);

    private sealed record MassTransitEnvelope<TCommand>(
        Guid MessageId,
        string[] MessageType,
        DateTimeOffset SentTime,
        Dictionary<string, string> Headers,
        TCommand Message);
}
