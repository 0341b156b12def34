using System.Text.Json;

namespace Conveyor.Cli.Commands;

/// <summary>
/// What the Api refuses in a batch's body as a whole, before it reads any job: a field given twice in one
/// object, at any depth (which value counts would be a guess), and a <c>\u</c> escape that is an unpaired
/// surrogate. Its 400 then names the body (<c>$</c> or <c>jobs</c>), not the job, so in a file of thousands
/// nobody could tell which one it is. The CLI checks each job for them before its batch is sent, and names it.
/// </summary>
internal static class BatchBodyRules
{
    private const string UnpairedSurrogate = "a \\u escape in it is an unpaired surrogate";

    /// <summary>
    /// The first such problem in <paramref name="job"/>, as its field and what is wrong with it
    /// (<c>payload.orderId: Is given more than once.</c>); null when there is none.
    /// </summary>
    public static string? FirstProblem(JsonElement job) => FirstProblem(job, path: null);

    /// <param name="path">Where <paramref name="value"/> is in the job (<c>payload.items[2]</c>); null for the job itself.</param>
    private static string? FirstProblem(JsonElement value, string? path)
    {
        switch (value.ValueKind)
        {
            case JsonValueKind.Object:
                // Names compare as the Api's parser compares them: unescaped, in the same casing ("a" and "\u0061" are one).
                var names = new HashSet<string>(StringComparer.Ordinal);
                foreach (var property in value.EnumerateObject())
                {
                    if (Read(() => property.Name) is not { } name)
                    {
                        return path is null
                            ? $"a field name is not valid Unicode text: {UnpairedSurrogate}."
                            : $"{path}: a field name in it is not valid Unicode text: {UnpairedSurrogate}.";
                    }

                    var field = path is null ? name : $"{path}.{name}";
                    if (!names.Add(name))
                    {
                        // The words the Api and the worker use for a field given twice (Conveyor.Contracts.ContractFields.GivenTwice).
                        return $"{field}: Is given more than once.";
                    }

                    if (FirstProblem(property.Value, field) is { } problem)
                    {
                        return problem;
                    }
                }

                return null;

            case JsonValueKind.Array:
                var index = 0;
                foreach (var item in value.EnumerateArray())
                {
                    if (FirstProblem(item, $"{path}[{index++}]") is { } problem)
                    {
                        return problem;
                    }
                }

                return null;

            case JsonValueKind.String when Read(value.GetString) is null:
                return $"{path}: Must be valid Unicode text: {UnpairedSurrogate}.";

            default:
                return null;
        }
    }

    /// <summary>The text, or null when its escapes do not form valid UTF-16 (reading it throws).</summary>
    private static string? Read(Func<string?> text)
    {
        try
        {
            return text();
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }
}
