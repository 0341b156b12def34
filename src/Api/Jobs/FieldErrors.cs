namespace Conveyor.Api.Jobs;

/// <summary>Validation messages by field name: the <c>errors</c> member of a 400 problem.</summary>
internal sealed class FieldErrors
{
    private readonly Dictionary<string, List<string>> _errors = new(StringComparer.Ordinal);

    public int Count => _errors.Count;

    /// <summary>Messages added so far, over all fields: a reader that shares this instance compares it before and after.</summary>
    public int Added { get; private set; }

    public void Add(string field, string message)
    {
        Added++;
        if (!_errors.TryGetValue(field, out var messages))
        {
            messages = [];
            _errors[field] = messages;
        }

        messages.Add(message);
    }

    /// <summary>
    /// Every error of <paramref name="inner"/>, the errors of a part of the request, under
    /// <paramref name="path"/>: a field <c>amount</c> as <c>path.amount</c>, the part as a whole
    /// (<see cref="JsonBody.Field"/>) as <c>path</c>. Without a path, each under its own name.
    /// </summary>
    public void AddAll(FieldErrors inner, string? path = null)
    {
        foreach (var (field, messages) in inner._errors)
        {
            foreach (var message in messages)
            {
                Add(path is null ? field : field == JsonBody.Field ? path : $"{path}.{field}", message);
            }
        }
    }

    public Dictionary<string, string[]> ToDictionary() =>
        _errors.ToDictionary(e => e.Key, e => e.Value.ToArray(), StringComparer.Ordinal);
}
