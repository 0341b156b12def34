using System.Text.Json;

namespace Conveyor.Api.ErrorQueues;

/// <summary>An <c>_error</c> or <c>_skipped</c> queue in <c>GET /api/error-queues</c>.</summary>
public sealed record ErrorQueueSummary(
    string Name, string Kind, string SourceQueue, long Messages, long Ready, long Unacknowledged, int Consumers);

/// <summary>Body of <c>GET /api/error-queues/{queue}/messages</c>.</summary>
/// <param name="StoppedEarly">
/// Why the peek ended before it had seen <c>limit</c> messages or the whole queue (the messages it
/// expected never came: another consumer took or holds them), so <c>messages</c> shows only part of
/// what is there; null when it saw all it set out to.
/// </param>
public sealed record ErrorQueueMessages(string Queue, long QueueDepth, IReadOnlyList<ErrorQueueMessage> Messages, string? StoppedEarly = null);

/// <param name="JobStatus">
/// The status of the message's job now (<see cref="JobStatusNow"/>): <c>missing</c> when the message
/// names a job whose row is gone (swept after <c>Retention:JobHours</c>, so moving the message back
/// runs the job again); null when the message names no job.
/// </param>
public sealed record ErrorQueueMessage(
    string? MessageId,
    string? MessageType,
    string? JobId,
    string? JobKind,
    string? JobStatus,
    string? ExceptionType,
    string? ExceptionMessage,
    string? StackTrace,
    DateTimeOffset? FaultedAt,
    string OriginalQueue,
    int? Attempts,
    string? Reason,
    string? DeadLetterReason,
    string GroupId,
    JsonElement? FaultHistory,
    string? ContentType,
    int BodyBytes,
    string BodyPreview,
    bool BodyTruncated)
{
    /// <summary>The value of <see cref="JobStatus"/> for a job id that names no row.</summary>
    public const string JobStatusMissing = "missing";

    /// <param name="jobStatuses">Each job's status by its id.</param>
    internal static ErrorQueueMessage From(string queue, PeekedMessage peeked, IReadOnlyDictionary<Guid, string> jobStatuses)
    {
        var m = peeked.Message;
        return new ErrorQueueMessage(
            m.MessageId, m.MessageType, m.JobId, m.JobKind, JobStatusNow(m.JobRowId, jobStatuses), m.ExceptionType, m.ExceptionMessage, m.StackTrace, m.FaultedAt,
            ErrorQueueNames.OriginalQueueOf(m.InputAddress, queue), m.Attempts, m.Reason, m.DeadLetterReason, m.GroupId,
            ParseHistory(m.FaultHistory), m.ContentType, m.BodyBytes, peeked.BodyPreview, peeked.BodyTruncated);
    }

    /// <summary>Job ids of the peeked messages, as the jobs table keys them.</summary>
    internal static IReadOnlyList<Guid> JobIds(IEnumerable<PeekedMessage> peeked) =>
        [.. peeked.Select(p => p.Message.JobRowId).OfType<Guid>().Distinct()];

    private static string? JobStatusNow(Guid? jobId, IReadOnlyDictionary<Guid, string> jobStatuses) =>
        jobId is { } id ? jobStatuses.GetValueOrDefault(id, JobStatusMissing) : null;

    /// <summary>
    /// The history as JSON when it has the shape a move writes (<see cref="FreshCopy.History"/>): an array of at
    /// most <see cref="FreshCopy.HistoryLength"/> flat objects whose values are strings, numbers or null, within
    /// <see cref="Contracts.JobHeaders.MaxFaultHistoryBytes"/>, every string valid text. Anything else came from
    /// whoever sent the command (the worker keeps headers it does not own) and is shown as its text, cut to that
    /// bound: embedded as it came, an array nested near the writer's depth limit or a lone surrogate escape
    /// (<c>"\ud800"</c>) would fail the whole answer, for every peek that reaches the message.
    /// </summary>
    private static JsonElement? ParseHistory(string? history)
    {
        if (history is null)
        {
            return null;
        }

        if (System.Text.Encoding.UTF8.GetByteCount(history) <= Contracts.JobHeaders.MaxFaultHistoryBytes)
        {
            try
            {
                // Depth 2 is the array and its objects: anything deeper is not a history a move wrote.
                using var document = JsonDocument.Parse(history, new JsonDocumentOptions { MaxDepth = 2 });
                if (IsWrittenHistory(document.RootElement))
                {
                    return document.RootElement.Clone();
                }
            }
            catch (JsonException)
            {
                // Shown as text below.
            }
        }

        return JsonSerializer.SerializeToElement(FaultedMessage.Cut(history, Contracts.JobHeaders.MaxFaultHistoryBytes));
    }

    private static bool IsWrittenHistory(JsonElement history)
    {
        if (history.ValueKind != JsonValueKind.Array || history.GetArrayLength() > FreshCopy.HistoryLength)
        {
            return false;
        }

        foreach (var entry in history.EnumerateArray())
        {
            if (entry.ValueKind != JsonValueKind.Object)
            {
                return false;
            }

            foreach (var field in entry.EnumerateObject())
            {
                if (!IsText(() => field.Name)
                    || field.Value.ValueKind is not (JsonValueKind.String or JsonValueKind.Number or JsonValueKind.Null)
                    || (field.Value.ValueKind == JsonValueKind.String && !IsText(field.Value.GetString)))
                {
                    return false;
                }
            }
        }

        return true;
    }

    /// <summary>False for a JSON string whose escapes make no valid UTF-16 text (a lone surrogate), which no writer writes.</summary>
    private static bool IsText(Func<string?> read)
    {
        try
        {
            _ = read();
            return true;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }
}

/// <summary>
/// Body of <c>GET /api/error-queues/{queue}/groups</c>. <paramref name="Ungrouped"/>: messages examined
/// after <see cref="GroupsVisitor.MaxGroups"/> groups existed whose fingerprint matched none of them.
/// </summary>
/// <param name="StoppedEarly">As for a peek (<see cref="ErrorQueueMessages.StoppedEarly"/>): the groups count only the messages examined.</param>
public sealed record ErrorQueueGroups(string Queue, long QueueDepth, long Examined, IReadOnlyList<ErrorQueueGroup> Groups, long Ungrouped, string? StoppedEarly = null);

public sealed record ErrorQueueGroup(
    string GroupId,
    string? ExceptionType,
    string NormalisedMessage,
    string? ExampleMessage,
    long Count,
    DateTimeOffset? FirstSeen,
    DateTimeOffset? LastSeen,
    IReadOnlyList<string> MessageTypes,
    IReadOnlyList<string> SampleMessageIds)
{
    internal static ErrorQueueGroup From(FaultGroup group) => new(
        group.GroupId, group.ExceptionType, group.NormalisedMessage, group.ExampleMessage, group.Count,
        group.FirstSeen, group.LastSeen, [.. group.MessageTypes], [.. group.SampleMessageIds]);
}

/// <summary>Body of the 202 answer to a move or purge.</summary>
public sealed record OperationAccepted(Guid OperationId, string Kind, string Queue, string State, bool DryRun);
