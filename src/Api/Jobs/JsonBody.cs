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
    /// <param name="repeated">Where the name is that the body was refused for giving twice, if that is why.</param>
    public static JsonDocument? ParseObject(
        ReadOnlyMemory<byte> body, FieldErrors errors, Func<JsonException, string> invalidJson, out RepeatedName? repeated)
    {
        repeated = null;
        // The reader checks UTF-8 only when a string is read, as an exception that is not a JsonException.
        if (!Utf8.IsValid(body.Span))
        {
            errors.Add(Field, "The body is not valid UTF-8.");
            return null;
        }

        // Checked before parsing: the parser's check for repeated names reads escaped names, and throws
        // for a broken one an exception that is not a JsonException either.
        if (FindBrokenEscape(body.Span) is { } field)
        {
            errors.Add(field, "Must be valid Unicode text: a \\u escape in it is an unpaired surrogate.");
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
            repeated = RepeatedName.Find(body.Span);
            if (repeated is not null)
            {
                // Under its top-level field; in a body that is an array, under the body as a whole.
                errors.Add(repeated.Path[0].Name ?? Field, repeated.ErrorAt(0));
            }
            else
            {
                errors.Add(Field, invalidJson(ex));
            }

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

    /// <summary>
    /// The field (top-level property, or <see cref="Field"/>) of the first string or name whose
    /// <c>\u</c> escapes do not form valid UTF-16, such as <c>"\ud800"</c> alone; null when there is
    /// none, or when the body is not JSON (the parser says where). Reading such a string throws an
    /// exception that is not a <see cref="JsonException"/>.
    /// </summary>
    private static string? FindBrokenEscape(ReadOnlySpan<byte> body)
    {
        // Unescaped text is valid UTF-8 (checked above), so only escapes can be broken.
        if (body.IndexOf("\\u"u8) < 0)
        {
            return null;
        }

        var reader = new Utf8JsonReader(body);
        string? property = null;
        while (TryRead(ref reader))
        {
            if (reader.TokenType is not (JsonTokenType.PropertyName or JsonTokenType.String))
            {
                continue;
            }

            var name = reader.TokenType == JsonTokenType.PropertyName && reader.CurrentDepth == 1;
            string text;
            try
            {
                text = reader.GetString()!;
            }
            catch (InvalidOperationException)
            {
                return name || property is null ? Field : property;
            }

            if (name)
            {
                property = text;
            }
        }

        return null;
    }

    private static bool TryRead(ref Utf8JsonReader reader)
    {
        try
        {
            return reader.Read();
        }
        catch (JsonException)
        {
            return false;
        }
    }
}
