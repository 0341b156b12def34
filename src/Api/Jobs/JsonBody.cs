using System.Text.Json;
using System.Text.Unicode;

namespace Conveyor.Api.Jobs;

/// <summary>Parses a request body that must be one JSON object: the first step of every JSON endpoint's parser.</summary>
internal static class JsonBody
{
    /// <summary>The key under which errors about the body as a whole are reported (a JSON path root).</summary>
    public const string Field = "$";

    private static readonly JsonDocumentOptions DocumentOptions = new()
    {
        // Two values for one field would make "which one counts" a guess.
        AllowDuplicateProperties = false,
    };

    /// <summary>
    /// The body as a JSON object, for the caller to dispose; null, with the reason added to
    /// <paramref name="errors"/> under <see cref="Field"/>, when it is not UTF-8, not JSON
    /// (<paramref name="invalidJson"/> words that reason) or not an object.
    /// </summary>
    public static JsonDocument? ParseObject(ReadOnlyMemory<byte> body, FieldErrors errors, Func<JsonException, string> invalidJson)
    {
        // The reader checks UTF-8 only when a string is read, as an exception that is not a JsonException.
        if (!Utf8.IsValid(body.Span))
        {
            errors.Add(Field, "The body is not valid UTF-8.");
            return null;
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(body, DocumentOptions);
        }
        catch (JsonException ex)
        {
            errors.Add(Field, invalidJson(ex));
            return null;
        }

        if (document.RootElement.ValueKind != JsonValueKind.Object)
        {
            document.Dispose();
            errors.Add(Field, "The body must be a JSON object.");
            return null;
        }

        return document;
    }
}
