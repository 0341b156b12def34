using System.Text.Json;
using Conveyor.Contracts;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Reads the fields of one JSON object and collects an error per bad field under its camelCase
/// name, so a client learns about every problem in one answer. Readers return a default value
/// after recording an error; callers check <see cref="HasErrors"/> before using the values.
/// </summary>
internal sealed class JsonFields(JsonElement body, FieldErrors errors)
{
    /// <summary>Unknown fields named in one answer at most; the rest are left out.</summary>
    private const int MaxUnknownReported = ContractFields.MaxReported;

    /// <summary>The fields the readers asked for, whether present or not.</summary>
    private readonly HashSet<string> _known = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>Messages the shared errors held before this reader: a caller's own findings (a bad header) are not this object's.</summary>
    private readonly int _addedBefore = errors.Added;

    /// <summary>Whether reading this object found a problem (errors found elsewhere before it do not count).</summary>
    public bool HasErrors => errors.Added > _addedBefore;

    /// <summary>
    /// After every field was read: an error for each field no reader asked for (a misspelt optional
    /// field would otherwise be dropped without a word, and the job run with its default) and for a
    /// field given twice in different casings (which one counts would be a guess).
    /// </summary>
    /// <param name="owner">What the fields belong to, for the message.</param>
    public void RejectUnknown(string owner = "this job")
    {
        var seen = new HashSet<string>(StringComparer.OrdinalIgnoreCase);
        var reported = 0;
        foreach (var property in body.EnumerateObject())
        {
            // Worded as the worker words the same refusal of a command published straight to RabbitMQ.
            var problem = !_known.Contains(property.Name) ? ContractFields.NotAField(owner, _known)
                : !seen.Add(property.Name) ? ContractFields.GivenTwiceInDifferentCasings
                : null;
            if (problem is not null && reported++ < MaxUnknownReported)
            {
                errors.Add(property.Name, problem);
            }
        }
    }

    public Guid RequiredId(string name)
    {
        if (!TryFindRequired(name, out var value))
        {
            return Guid.Empty;
        }

        if (value.ValueKind != JsonValueKind.String || !value.TryGetGuid(out var id))
        {
            errors.Add(name, "Must be a UUID string.");
            return Guid.Empty;
        }

        if (ContractRules.Id(id) is { } problem)
        {
            errors.Add(name, problem);
        }

        return id;
    }

    public string RequiredString(string name, Func<string, string?> rule) =>
        TryFindRequired(name, out var value) ? ReadString(name, value, rule) ?? "" : "";

    public string? OptionalString(string name, Func<string, string?> rule) =>
        TryFind(name, out var value) && value.ValueKind != JsonValueKind.Null ? ReadString(name, value, rule) : null;

    public long RequiredInt64(string name, long min, long max)
    {
        if (!TryFindRequired(name, out var value))
        {
            return 0;
        }

        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt64(out var number))
        {
            errors.Add(name, "Must be an integer.");
            return 0;
        }

        if (ContractRules.InRange(number, min, max) is { } problem)
        {
            errors.Add(name, problem);
        }

        return number;
    }

    public int? OptionalInt32(string name, int min, int max)
    {
        if (!TryFind(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (value.ValueKind != JsonValueKind.Number || !value.TryGetInt32(out var number))
        {
            errors.Add(name, "Must be an integer.");
            return null;
        }

        if (ContractRules.InRange(number, min, max) is { } problem)
        {
            errors.Add(name, problem);
        }

        return number;
    }

    /// <summary>
    /// An ISO 8601 date and time with an explicit offset (<c>Z</c> or <c>+02:00</c>), as the same instant
    /// in UTC (Npgsql writes a timestamptz from nothing else), or null when absent.
    /// </summary>
    public DateTimeOffset? OptionalTimestamp(string name)
    {
        if (!TryFind(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (value.ValueKind != JsonValueKind.String
            || !value.TryGetDateTimeOffset(out var timestamp)
            || !HasExplicitOffset(value.GetString()!))
        {
            errors.Add(name, "Must be an ISO 8601 date and time with an offset, such as 2030-01-31T09:30:00Z or 2030-01-31T10:30:00+01:00.");
            return null;
        }

        return timestamp.ToUniversalTime();
    }

    /// <summary>
    /// An array of <paramref name="min"/> to <paramref name="max"/> elements; null, with an error, when
    /// the field is missing, not an array or of another length.
    /// </summary>
    public JsonElement? RequiredArray(string name, int min, int max)
    {
        if (!TryFindRequired(name, out var value))
        {
            return null;
        }

        if (value.ValueKind != JsonValueKind.Array)
        {
            errors.Add(name, "Must be an array.");
            return null;
        }

        var length = value.GetArrayLength();
        if (length < min || length > max)
        {
            errors.Add(name, $"Must hold {min} to {max} elements; it holds {length}.");
            return null;
        }

        return value;
    }

    /// <summary>
    /// The value of a field that may be left out (null when it is), of any kind, for the caller to
    /// check. An explicit JSON null is an error: for a field whose absence means "no restriction" (a
    /// filter), a null that read as "not given" would widen the request without a word.
    /// </summary>
    public JsonElement? OptionalNotNull(string name)
    {
        if (!TryFind(name, out var value))
        {
            return null;
        }

        if (value.ValueKind == JsonValueKind.Null)
        {
            errors.Add(name, "Must not be null; leave the field out instead.");
            return null;
        }

        return value;
    }

    /// <summary>
    /// Any JSON value but null, nesting objects and arrays at most <paramref name="maxDepth"/> deep (the
    /// value itself, when an object or array, is level 1); cloned so it outlives the parsed document.
    /// </summary>
    public JsonElement RequiredValue(string name, int maxDepth)
    {
        if (!TryFindRequired(name, out var value))
        {
            return default;
        }

        if (ContractRules.NestsDeeper(value, maxDepth))
        {
            errors.Add(name, ContractRules.PayloadTooDeep(maxDepth));
            return default;
        }

        return value.Clone();
    }

    /// <summary>Without an offset a time would be read in the server's zone: a guess.</summary>
    private static bool HasExplicitOffset(string text) =>
        text.EndsWith('Z') || text.EndsWith('z')
        || (text.Length > 6 && text[^6] is '+' or '-' && text[^3] == ':');

    private string? ReadString(string name, JsonElement value, Func<string, string?> rule)
    {
        if (value.ValueKind != JsonValueKind.String)
        {
            errors.Add(name, "Must be a string.");
            return null;
        }

        var text = value.GetString()!;
        if (rule(text) is { } problem)
        {
            errors.Add(name, problem);
        }

        return text;
    }

    private bool TryFindRequired(string name, out JsonElement value)
    {
        if (TryFind(name, out value) && value.ValueKind != JsonValueKind.Null)
        {
            return true;
        }

        errors.Add(name, "Is required.");
        return false;
    }

    /// <summary>The camelCase name first; other casings are accepted, as ASP.NET Core's own binding does.</summary>
    private bool TryFind(string name, out JsonElement value)
    {
        _known.Add(name);
        if (body.TryGetProperty(name, out value))
        {
            return true;
        }

        foreach (var property in body.EnumerateObject())
        {
            if (string.Equals(property.Name, name, StringComparison.OrdinalIgnoreCase))
            {
                value = property.Value;
                return true;
            }
        }

        return false;
    }
}
