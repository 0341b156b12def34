using System.Text.Json;

namespace Conveyor.Cli;

/// <summary>
/// Checks that an answer has the shape the Api documents before anything of it is used or printed, so
/// that a proxy's page or another service's JSON ends with <see cref="ExitCodes.UnexpectedAnswer"/>
/// instead of being printed (with <c>--json</c>) as if a Conveyor Api had given it.
/// </summary>
internal static class Answers
{
    /// <summary>The answer, when it is a JSON array of objects.</summary>
    public static JsonElement ExpectArray(JsonElement answer, string what) =>
        answer.ValueKind == JsonValueKind.Array && answer.EnumerateArray().All(item => item.ValueKind == JsonValueKind.Object)
            ? answer
            : throw Unexpected($"expected {what}: a JSON array of objects");

    /// <summary>The answer, when it is a JSON object with each of <paramref name="properties"/>.</summary>
    public static JsonElement ExpectObject(JsonElement answer, string what, params string[] properties) =>
        answer.ValueKind == JsonValueKind.Object && properties.All(name => answer.TryGetProperty(name, out _))
            ? answer
            : throw Unexpected($"expected {what}: a JSON object with {string.Join(", ", properties)}");

    /// <summary>
    /// The answer, when it is a JSON object whose <paramref name="list"/> is a JSON array of objects (a page of jobs and its
    /// <c>items</c>): a list given as an object, a string or a number would otherwise be printed by <c>--json</c> as the
    /// Api's, or end the table with an error from the JSON reader.
    /// </summary>
    public static JsonElement ExpectObjectWithList(JsonElement answer, string what, string list) =>
        answer.ValueKind == JsonValueKind.Object && answer.TryGetProperty(list, out var items) && items.ValueKind == JsonValueKind.Array
        && items.EnumerateArray().All(item => item.ValueKind == JsonValueKind.Object)
            ? answer
            : throw Unexpected($"expected {what}: a JSON object whose {list} is a JSON array of objects");

    /// <summary>
    /// <paramref name="page"/>, when its <paramref name="cursor"/> (what the next page is asked for with) is a string, null or
    /// not given. One given as a number, an object, an array or a boolean would otherwise be read as no cursor: the page
    /// shown as the last one, and printed by <c>--json</c> as the Api's.
    /// </summary>
    public static JsonElement ExpectCursor(JsonElement page, string what, string cursor) =>
        !page.TryGetProperty(cursor, out var value) || value.ValueKind is JsonValueKind.String or JsonValueKind.Null
            ? page
            : throw Unexpected($"expected {what}: its {cursor} a string or null");

    /// <summary>
    /// <paramref name="answer"/> (an object with <paramref name="property"/>) to a read of <paramref name="what"/>
    /// <paramref name="id"/>, when its <paramref name="property"/> names that id. The Api answers such a read with what was
    /// asked for, so an answer that shows another (or no id at all) comes from something else at its address (a proxy or
    /// cache that mixes up paths, a wrong base URL) and says nothing of it: it ends as <see cref="Unexpected"/>, naming both.
    /// </summary>
    public static JsonElement ExpectAskedFor(JsonElement answer, string what, string property, Guid id)
    {
        var answered = answer.GetProperty(property);
        return answered.ValueKind == JsonValueKind.String && Guid.TryParse(answered.GetString(), out var shown) && shown == id
            ? answer
            : throw Unexpected(
                $"asked for {what} {id}, it answered with {what} {(answered.ValueKind == JsonValueKind.String ? answered.GetString() : answered.GetRawText())}");
    }

    public static CliFailureException Unexpected(string reason) =>
        new(ExitCodes.UnexpectedAnswer,
            $"the answer is not one a Conveyor Api gives ({reason}).{Environment.NewLine}"
            + $"Is --api (or {CliContext.ApiUrlVariable}) the address of a Conveyor Api of this version?");
}
