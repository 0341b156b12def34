using System.Text.Json.Nodes;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// Which messages an operation acts on. Every condition given must hold; no condition = every message.
/// Type names match the full name, the name without its namespace (<c>Outer+Inner</c> for a nested type) or a
/// nested type's own name (<c>Inner</c>), ignoring case. Fault times
/// match <c>faultedAfter &lt;= MT-Fault-Timestamp &lt; faultedBefore</c>. Message ids match as the broker
/// has them or, for an id with control characters (which a request cannot carry), as the audit trail
/// writes it (<see cref="AuditText"/>).
/// </summary>
public sealed record MessageFilter
{
    public const int MaxMessageIds = 1000;

    /// <summary>The longest message id a filter takes, in characters (UTF-16 code units).</summary>
    public const int MaxMessageIdLength = 200;

    public static MessageFilter All { get; } = new();

    public IReadOnlySet<string>? MessageIds { get; init; }

    /// <summary>The jobs whose commands to act on (the <c>Conveyor-Job-Id</c> header of each message).</summary>
    public IReadOnlySet<Guid>? JobIds { get; init; }

    public string? ExceptionType { get; init; }

    public string? MessageType { get; init; }

    public string? GroupId { get; init; }

    public DateTimeOffset? FaultedBefore { get; init; }

    public DateTimeOffset? FaultedAfter { get; init; }

    public bool Matches(FaultedMessage message)
    {
        if (MessageIds is not null && !MatchesId(MessageIds, message.MessageId))
        {
            return false;
        }

        if (JobIds is not null && (message.JobRowId is not { } jobId || !JobIds.Contains(jobId)))
        {
            return false;
        }

        if (ExceptionType is not null && !TypeNameMatches(ExceptionType, message.ExceptionType))
        {
            return false;
        }

        if (MessageType is not null && !TypeNameMatches(MessageType, message.MessageType))
        {
            return false;
        }

        if (GroupId is not null && !string.Equals(GroupId, message.GroupId, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        if (FaultedBefore is { } before && !(message.FaultedAt < before))
        {
            return false;
        }

        return FaultedAfter is not { } after || message.FaultedAt >= after;
    }

    /// <summary>The filter as stored with an operation and shown in the audit trail.</summary>
    public JsonObject ToJson()
    {
        var json = new JsonObject();
        if (MessageIds is not null)
        {
            json["messageIds"] = new JsonArray([.. MessageIds.Order(StringComparer.Ordinal).Select(id => JsonValue.Create(id))]);
        }

        if (JobIds is not null)
        {
            json["jobIds"] = new JsonArray([.. JobIds.Order().Select(id => JsonValue.Create(id))]);
        }

        Add(json, "exceptionType", ExceptionType);
        Add(json, "messageType", MessageType);
        Add(json, "groupId", GroupId);
        Add(json, "faultedBefore", FaultedBefore);
        Add(json, "faultedAfter", FaultedAfter);
        return json;
    }

    private static void Add<T>(JsonObject json, string name, T? value)
    {
        if (value is not null)
        {
            json[name] = JsonValue.Create(value);
        }
    }

    private static bool MatchesId(IReadOnlySet<string> ids, string? id) =>
        id is not null && (ids.Contains(id) || (AuditText.NeedsEscaping(id) && ids.Contains(AuditText.Escape(id))));

    private static bool TypeNameMatches(string wanted, string? actual)
    {
        if (actual is null)
        {
            return false;
        }

        if (string.Equals(wanted, actual, StringComparison.OrdinalIgnoreCase))
        {
            return true;
        }

        // Without its namespace (a nested type with the type it is nested in, Outer+Inner, as the CLI's tables show it),
        // or its own name alone (Inner).
        var withoutNamespace = actual[(actual.LastIndexOf('.') + 1)..];
        var ownName = actual[(actual.LastIndexOfAny(['.', '+', ':']) + 1)..];
        return string.Equals(wanted, withoutNamespace, StringComparison.OrdinalIgnoreCase)
            || string.Equals(wanted, ownName, StringComparison.OrdinalIgnoreCase);
    }
}
