using System.Globalization;
using System.Text.Json;
using Conveyor.Api.Jobs;

namespace Conveyor.Api.ErrorQueues;

/// <summary>A move or purge request as sent, before the queues are checked.</summary>
internal sealed record ParsedOperation(MessageFilter Filter, string? Target, int? Limit, bool DryRun, string? Confirm);

/// <summary>
/// Reads the body of <c>POST .../move</c> and <c>POST .../purge</c>. Unknown fields are refused: a
/// misspelt filter field silently ignored would widen a purge to every message.
/// </summary>
internal static class OperationRequestParser
{
    public const int MaxLimit = 10_000_000;
    private const int MaxTextLength = 500;

    private static readonly string[] FilterFields = ["messageIds", "jobIds", "exceptionType", "messageType", "groupId", "faultedBefore", "faultedAfter"];

    public static ParsedOperation? Parse(ReadOnlyMemory<byte> body, bool purge, FieldErrors errors)
    {
        using var document = JsonBody.ParseObject(body, errors, _ => "The body is not valid JSON; each field may appear once.");
        if (document is null)
        {
            return null;
        }

        var root = document.RootElement;
        string[] known = purge ? ["filter", "limit", "dryRun", "confirm"] : ["filter", "target", "limit", "dryRun"];
        RefuseUnknown(root, known, "", errors);

        var filter = MessageFilter.All;
        if (Find(root, "filter") is { } filterJson)
        {
            filter = ParseFilter(filterJson, errors);
        }

        string? target = null;
        if (!purge && Find(root, "target") is { } targetJson)
        {
            target = Text(targetJson, "target", ErrorQueueNames.MaxQueueNameBytes, errors);
        }

        int? limit = null;
        if (Find(root, "limit") is { } limitJson)
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
        if (Find(root, "dryRun") is { } dryRunJson)
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
        if (purge && Find(root, "confirm") is { } confirmJson)
        {
            confirm = confirmJson.ValueKind == JsonValueKind.String ? confirmJson.GetString() : null;
            if (confirm is null)
            {
                errors.Add("confirm", "Must be a string: the name of the queue to purge.");
            }
        }

        return new ParsedOperation(filter, target, limit, dryRun, confirm);
    }

    private static MessageFilter ParseFilter(JsonElement json, FieldErrors errors)
    {
        if (json.ValueKind != JsonValueKind.Object)
        {
            errors.Add("filter", "Must be an object.");
            return MessageFilter.All;
        }

        RefuseUnknown(json, FilterFields, "filter.", errors);
        HashSet<string>? ids = null;
        if (Find(json, "messageIds") is { } idsJson)
        {
            ids = ParseIds(idsJson, errors);
        }

        HashSet<Guid>? jobIds = null;
        if (Find(json, "jobIds") is { } jobIdsJson)
        {
            jobIds = ParseJobIds(jobIdsJson, errors);
        }

        var before = Find(json, "faultedBefore") is { } beforeJson ? Time(beforeJson, "filter.faultedBefore", errors) : null;
        var after = Find(json, "faultedAfter") is { } afterJson ? Time(afterJson, "filter.faultedAfter", errors) : null;
        if (before is not null && after is not null && after >= before)
        {
            errors.Add("filter.faultedAfter", "Must be earlier than filter.faultedBefore.");
        }

        var groupId = Find(json, "groupId") is { } groupJson ? Text(groupJson, "filter.groupId", 64, errors) : null;
        if (groupId is not null && !groupId.All(char.IsAsciiHexDigit))
        {
            errors.Add("filter.groupId", "Must be a group id as GET .../groups shows it (hexadecimal).");
        }

        return new MessageFilter
        {
            MessageIds = ids,
            JobIds = jobIds,
            ExceptionType = Find(json, "exceptionType") is { } type ? Text(type, "filter.exceptionType", MaxTextLength, errors) : null,
            MessageType = Find(json, "messageType") is { } messageType ? Text(messageType, "filter.messageType", MaxTextLength, errors) : null,
            GroupId = groupId?.ToLowerInvariant(),
            FaultedBefore = before,
            FaultedAfter = after,
        };
    }

    private static HashSet<string>? ParseIds(JsonElement json, FieldErrors errors) =>
        ParseSet<string>(json, "filter.messageIds", "message ids", "Each message id must be a string of 1 to 200 characters, none a control character.", ReadMessageId, StringComparer.Ordinal, errors);

    private static HashSet<Guid>? ParseJobIds(JsonElement json, FieldErrors errors) =>
        ParseSet<Guid>(json, "filter.jobIds", "job ids", "Each job id must be a UUID string.", ReadJobId, null, errors);

    private static bool ReadMessageId(JsonElement id, out string text)
    {
        text = id.ValueKind == JsonValueKind.String ? id.GetString() ?? "" : "";
        return text.Length is > 0 and <= 200 && FieldRules.Text(text) is null;
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

    private static string? Text(JsonElement json, string field, int maxLength, FieldErrors errors)
    {
        if (json.ValueKind != JsonValueKind.String || json.GetString() is not { } text || string.IsNullOrWhiteSpace(text) || text.Length > maxLength)
        {
            errors.Add(field, $"Must be a non-blank string of at most {maxLength} characters.");
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

    private static DateTimeOffset? Time(JsonElement json, string field, FieldErrors errors)
    {
        if (json.ValueKind == JsonValueKind.String
            && DateTimeOffset.TryParse(json.GetString(), CultureInfo.InvariantCulture, DateTimeStyles.AssumeUniversal, out var time)
            && json.GetString()!.Contains('T', StringComparison.Ordinal))
        {
            return time;
        }

        errors.Add(field, "Must be an ISO 8601 date and time, such as 2026-11-28T06:25:00Z.");
        return null;
    }

    private static JsonElement? Find(JsonElement json, string name)
    {
        foreach (var property in json.EnumerateObject())
        {
            if (string.Equals(property.Name, name, StringComparison.OrdinalIgnoreCase))
            {
                return property.Value.ValueKind == JsonValueKind.Null ? null : property.Value;
            }
        }

        return null;
    }

    private static void RefuseUnknown(JsonElement json, string[] known, string prefix, FieldErrors errors)
    {
        foreach (var property in json.EnumerateObject())
        {
            if (!known.Contains(property.Name, StringComparer.OrdinalIgnoreCase))
            {
                errors.Add(prefix + property.Name, $"Unknown field. Known: {string.Join(", ", known)}.");
            }
        }
    }
}
