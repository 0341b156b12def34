using System.Text.Json;
using Conveyor.Api.Hosting;
using Conveyor.Api.Jobs;

namespace Conveyor.Api.ErrorQueues;

/// <summary>A move or purge request as sent, before the queues are checked.</summary>
internal sealed record ParsedOperation(MessageFilter Filter, string? Target, int? Limit, bool DryRun, string? Confirm);

/// <summary>
/// Reads the body of <c>POST .../move</c> and <c>POST .../purge</c>. Unknown fields are refused: a
/// misspelt filter field silently ignored would widen a purge to every message. So are a field given
/// twice in different casings and an explicit null (which of two values counts, or whether null means
/// "none" or "any", would be a guess); leaving a field out is how to say "no restriction".
/// </summary>
internal static class OperationRequestParser
{
    public const int MaxLimit = 10_000_000;
    private const int MaxTextLength = 500;
    private const string FilterField = "filter";

    public static ParsedOperation? Parse(ReadOnlyMemory<byte> body, bool purge, FieldErrors errors)
    {
        using var document = JsonBody.ParseObject(body, errors, _ => "The body is not valid JSON; each field may appear once.");
        if (document is null)
        {
            return null;
        }

        var fields = new JsonFields(document.RootElement, errors);
        var filter = fields.OptionalNotNull(FilterField) is { } filterJson ? ParseFilter(filterJson, errors) : MessageFilter.All;

        string? target = null;
        if (!purge && fields.OptionalNotNull("target") is { } targetJson)
        {
            target = Text(targetJson, "target", ErrorQueueNames.MaxQueueNameBytes, errors, exact: true);
        }

        int? limit = null;
        if (fields.OptionalNotNull("limit") is { } limitJson)
        {
            if (limitJson.ValueKind != JsonValueKind.Number || !limitJson.TryGetInt32(out var value) || value < 1 || value > MaxLimit)
            {
                errors.Add("limit", $"Must be an integer between 1 and {MaxLimit}.");
            }
            else
            {
                limit = value;
            }
        }

        var dryRun = false;
        if (fields.OptionalNotNull("dryRun") is { } dryRunJson)
        {
            if (dryRunJson.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            {
                errors.Add("dryRun", "Must be true or false.");
            }
            else
            {
                dryRun = dryRunJson.GetBoolean();
            }
        }

        string? confirm = null;
        if (purge && fields.OptionalNotNull("confirm") is { } confirmJson)
        {
            confirm = confirmJson.ValueKind == JsonValueKind.String ? confirmJson.GetString() : null;
            if (confirm is null)
            {
                errors.Add("confirm", "Must be a string: the name of the queue to purge.");
            }
        }

        fields.RejectUnknown(purge ? "a purge" : "a move");
        return new ParsedOperation(filter, target, limit, dryRun, confirm);
    }

    /// <summary>The filter object; its errors are named <c>filter.&lt;field&gt;</c>.</summary>
    private static MessageFilter ParseFilter(JsonElement json, FieldErrors errors)
    {
        if (json.ValueKind != JsonValueKind.Object)
        {
            errors.Add(FilterField, "Must be an object.");
            return MessageFilter.All;
        }

        var filterErrors = new FieldErrors();
        var fields = new JsonFields(json, filterErrors);
        var ids = fields.OptionalNotNull("messageIds") is { } idsJson ? ParseIds(idsJson, filterErrors) : null;
        var jobIds = fields.OptionalNotNull("jobIds") is { } jobIdsJson ? ParseJobIds(jobIdsJson, filterErrors) : null;
        var exceptionType = fields.OptionalNotNull("exceptionType") is { } type ? Text(type, "exceptionType", MaxTextLength, filterErrors) : null;
        var messageType = fields.OptionalNotNull("messageType") is { } messageTypeJson ? Text(messageTypeJson, "messageType", MaxTextLength, filterErrors) : null;

        var groupId = fields.OptionalNotNull("groupId") is { } groupJson ? Text(groupJson, "groupId", 64, filterErrors) : null;
        if (groupId is not null && !groupId.All(char.IsAsciiHexDigit))
        {
            filterErrors.Add("groupId", "Must be a group id as GET .../groups shows it (hexadecimal).");
        }

        var before = fields.OptionalNotNull("faultedBefore") is { } beforeJson ? Time(beforeJson, "faultedBefore", filterErrors) : null;
        var after = fields.OptionalNotNull("faultedAfter") is { } afterJson ? Time(afterJson, "faultedAfter", filterErrors) : null;
        if (before is not null && after is not null && after >= before)
        {
            filterErrors.Add("faultedAfter", "Must be earlier than filter.faultedBefore.");
        }

        fields.RejectUnknown("a filter");
        errors.AddAll(filterErrors, FilterField);
        return new MessageFilter
        {
            MessageIds = ids,
            JobIds = jobIds,
            ExceptionType = exceptionType,
            MessageType = messageType,
            GroupId = groupId?.ToLowerInvariant(),
            FaultedBefore = before,
            FaultedAfter = after,
        };
    }

    private static HashSet<string>? ParseIds(JsonElement json, FieldErrors errors) =>
        ParseSet<string>(json, "messageIds", "message ids", $"Each message id must be a string of 1 to {MessageFilter.MaxMessageIdLength} characters, none a control character (write one as the audit trail does, such as \\u0000).", ReadMessageId, StringComparer.Ordinal, errors);

    private static HashSet<Guid>? ParseJobIds(JsonElement json, FieldErrors errors) =>
        ParseSet<Guid>(json, "jobIds", "job ids", "Each job id must be a UUID string.", ReadJobId, null, errors);

    private static bool ReadMessageId(JsonElement id, out string text)
    {
        text = id.ValueKind == JsonValueKind.String ? id.GetString() ?? "" : "";
        return text.Length is > 0 and <= MessageFilter.MaxMessageIdLength && FieldRules.Text(text) is null;
    }

    private static bool ReadJobId(JsonElement id, out Guid jobId)
    {
        jobId = Guid.Empty;
        return id.ValueKind == JsonValueKind.String && id.TryGetGuid(out jobId);
    }

    private delegate bool TryReadElement<T>(JsonElement element, out T value);

    /// <summary>A JSON array of 1 to <see cref="MessageFilter.MaxMessageIds"/> elements, each read by <paramref name="read"/>; null, with one error, otherwise.</summary>
    private static HashSet<T>? ParseSet<T>(
        JsonElement json, string field, string plural, string eachRule, TryReadElement<T> read, IEqualityComparer<T>? comparer, FieldErrors errors)
    {
        if (json.ValueKind != JsonValueKind.Array || json.GetArrayLength() is 0 or > MessageFilter.MaxMessageIds)
        {
            errors.Add(field, $"Must be an array of 1 to {MessageFilter.MaxMessageIds} {plural}.");
            return null;
        }

        var set = new HashSet<T>(comparer);
        foreach (var element in json.EnumerateArray())
        {
            if (!read(element, out var value))
            {
                errors.Add(field, eachRule);
                return null;
            }

            set.Add(value);
        }

        return set;
    }

    /// <param name="exact">
    /// The text names something as it is (a queue, in which RabbitMQ keeps spaces), so whitespace around it is
    /// refused rather than trimmed: trimmed, <c>" charge-payment"</c> would move to another queue than the one
    /// named. Otherwise (type names and group ids, matched loosely anyway) it is trimmed.
    /// </param>
    private static string? Text(JsonElement json, string field, int maxLength, FieldErrors errors, bool exact = false)
    {
        if (json.ValueKind != JsonValueKind.String || json.GetString() is not { } text || string.IsNullOrWhiteSpace(text) || text.Length > maxLength)
        {
            errors.Add(field, $"Must be a non-blank string of at most {maxLength} characters.");
            return null;
        }

        if (exact && text.Length != text.Trim().Length)
        {
            errors.Add(field, "Must not begin or end with whitespace: give the name exactly.");
            return null;
        }

        // Recorded with the operation, in a jsonb or text column.
        text = text.Trim();
        if (FieldRules.Text(text) is { } problem)
        {
            errors.Add(field, problem);
            return null;
        }

        return text;
    }

    /// <summary>The instant in UTC, as the audit shows every other time; compared with the faults' times by instant either way.</summary>
    private static DateTimeOffset? Time(JsonElement json, string field, FieldErrors errors)
    {
        if (json.ValueKind == JsonValueKind.String && IsoTimes.TryParse(json.GetString(), out var time))
        {
            return time;
        }

        errors.Add(field, IsoTimes.Expected);
        return null;
    }
}
