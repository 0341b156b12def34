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
    public static JsonDocument? ParseObject(ReadOnlyMemory<byte> body, FieldErrors errors, Func<JsonException, string> invalidJson) =>
        ParseObject(body, errors, invalidJson, out _);

    /// <inheritdoc cref="ParseObject(ReadOnlyMemory{byte}, FieldErrors, Func{JsonException, string})"/>
    /// <param name="fault">Where the broken escape or the name given twice is that the body was refused for, if that is why.</param>
    public static JsonDocument? ParseObject(
        ReadOnlyMemory<byte> body, FieldErrors errors, Func<JsonException, string> invalidJson, out JsonFault? fault)
    {
        fault = null;
        // The reader checks UTF-8 only when a string is read, as an exception that is not a JsonException.
        if (!Utf8.IsValid(body.Span))
        {
            errors.Add(Field, "The body is not valid UTF-8.");
            return null;
        }

        // Looked for before parsing, where there are escapes (unescaped text is valid UTF-8): the parser's check for
        // repeated names reads escaped names, and throws for a broken one an exception that is not a JsonException
        // either; a broken one in a value is read only when the value is.
        if (body.Span.IndexOf("\\u"u8) >= 0 && JsonFault.Find(body.Span) is { IsBrokenEscape: true } broken)
        {
            fault = broken;
            errors.Add(TopField(broken), broken.ErrorAt(0));
            return null;
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(body, DocumentOptions);
        }
        catch (JsonException ex)
        {
            // A repeated name is the one refusal a client cannot place from the parser's words (no line or
            // byte is given for it), so the field is named, as a batch names it inside a job.
            fault = JsonFault.Find(body.Span);
            errors.Add(fault is null ? Field : TopField(fault), fault is null ? invalidJson(ex) : fault.ErrorAt(0));
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

    /// <summary>The top-level field holding the fault; in a body that is not an object, or for a name that cannot be read, the body as a whole.</summary>
    private static string TopField(JsonFault fault) => fault.Path is [{ Name: { } field }, ..] ? field : Field;
}
