using System.Text.Json;

namespace Conveyor.Api.Jobs;

/// <summary>One job of a batch: the request, and the bytes it was sent as (hashed, and stored with its row).</summary>
internal sealed record JobBatchItem(JobRequest Request, byte[] Body);

/// <summary>
/// Turns the body of <c>POST /api/jobs/{kind}/batch</c>, <c>{ "jobs": [ … ] }</c>, into its jobs, each
/// read exactly as the body of <c>POST /api/jobs/{kind}</c> would be; or into errors that name each
/// bad field by its place, such as <c>jobs[3].amountMinor</c>. A batch is accepted whole or refused
/// whole: one bad job refuses them all, so a client never has to work out which half went in.
/// </summary>
internal static class JobBatchParser
{
    public const string JobsField = "jobs";

    /// <summary>Null when <paramref name="errors"/> received at least one error.</summary>
    /// <param name="maxJobs">The most jobs a batch may hold (the caller's rate limit may make it fewer than usual).</param>
    /// <param name="maxJobBytes">The largest job, as for the body of a single submission.</param>
    public static IReadOnlyList<JobBatchItem>? Parse(
        string kind, byte[] body, FieldErrors errors, DateTimeOffset now, WebhookUrlRules webhookUrls, int maxJobs, int maxJobBytes)
    {
        // Checked and parsed once, whole; each job is then read from this document.
        var bodyErrors = new FieldErrors();
        using var document = JsonBody.ParseObject(body, bodyErrors, JobRequestParser.InvalidJson, out var repeated);
        if (document is null)
        {
            // The parser's refusal names the body as a whole, or its top-level field; one inside a job is named by its place.
            if ((repeated is null ? BrokenEscapeInJob(body) : RepeatInJob(repeated)) is { } fault)
            {
                errors.Add(fault.Field, fault.Message);
                return null;
            }

            errors.AddAll(bodyErrors);
            return null;
        }

        var fields = new JsonFields(document.RootElement, errors);
        var jobs = fields.RequiredArray(JobsField, 1, maxJobs);
        fields.RejectUnknown("a batch");
        if (jobs is not { } array || fields.HasErrors)
        {
            return null;
        }

        var bytes = Elements(body);
        var items = new List<JobBatchItem>();
        var firstOfKey = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (element, index) in array.EnumerateArray().Select((element, index) => (element, index)))
        {
            var (path, sent) = ($"{JobsField}[{index}]", bytes[index]);
            if (element.ValueKind != JsonValueKind.Object)
            {
                errors.Add(path, "Must be a JSON object: the fields of one job.");
                continue;
            }

            if (sent.Length > maxJobBytes)
            {
                errors.Add(path, $"Must be at most {maxJobBytes} bytes, as the body of a single job.");
                continue;
            }

            var jobErrors = new FieldErrors();
            var request = JobRequestParser.Read(kind, element, jobErrors, now, webhookUrls, deferRunAtWindow: true);
            if (request is null)
            {
                errors.AddAll(jobErrors, path);
                continue;
            }

            // Two jobs with one business id would be one job, answered twice: most likely a mistake.
            if (!firstOfKey.TryAdd(request.BusinessKey, index))
            {
                errors.Add($"{path}.{JobRequestParser.BusinessIdField(kind)}",
                    $"Is the same as in {JobsField}[{firstOfKey[request.BusinessKey]}]: a batch holds each job once.");
                continue;
            }

            items.Add(new JobBatchItem(request, sent.ToArray()));
        }

        return errors.Count > 0 ? null : items;
    }

    /// <summary>
    /// Where, in which job, a body the parser refused has a field given twice in one object: the parser says only
    /// that the body is not valid JSON (JsonBody names the top-level <c>jobs</c>), which leaves the client of a batch
    /// of a hundred jobs to find the job. The job's field, or the job's field that holds the repeat when it is nested
    /// deeper (a webhook's payload), or the job itself. Null when the repeat is not in a job: JsonBody's words stand then.
    /// </summary>
    private static (string Field, string Message)? RepeatInJob(RepeatedName repeated) =>
        repeated.Path is [{ Name: { } top }, { Name: null } job, var field, ..]
        && string.Equals(top, JobsField, StringComparison.OrdinalIgnoreCase)
            ? (Place(job.Index, field.Name), repeated.ErrorAt(2))
            : null;

    /// <summary>
    /// Where, in which job, a body the parser refused has a <c>\u</c> escape that is half a surrogate pair, named as
    /// <see cref="RepeatInJob"/> names a repeat. Null when it is not in a job: JsonBody's words stand then.
    /// </summary>
    private static (string Field, string Message)? BrokenEscapeInJob(byte[] body)
    {
        var reader = new Utf8JsonReader(body);
        var (inJobs, index, field) = (false, -1, (string?)null);
        try
        {
            while (reader.Read())
            {
                var depth = reader.CurrentDepth;
                if (reader.TokenType == JsonTokenType.PropertyName)
                {
                    if (BrokenEscape(ref reader))
                    {
                        // Outside a job, JsonBody names it.
                        return inJobs && depth >= 3 && index >= 0
                            ? (depth == 3 ? Place(index, null) : Place(index, field), BrokenEscapeError)
                            : null;
                    }

                    if (depth == 1)
                    {
                        inJobs = string.Equals(reader.GetString(), JobsField, StringComparison.OrdinalIgnoreCase);
                    }
                    else if (depth == 3)
                    {
                        field = reader.GetString();
                    }

                    continue;
                }

                if (depth == 1 && reader.TokenType != JsonTokenType.StartArray)
                {
                    // The value of a top-level field that is not the jobs array.
                    inJobs = false;
                }

                // A value of the top-level jobs array: the next job.
                if (inJobs && depth == 2 && reader.TokenType is not (JsonTokenType.EndObject or JsonTokenType.EndArray))
                {
                    (index, field) = (index + 1, null);
                }

                if (inJobs && depth >= 2 && reader.TokenType == JsonTokenType.String && BrokenEscape(ref reader))
                {
                    return (depth == 2 ? Place(index, null) : Place(index, field), BrokenEscapeError);
                }
            }
        }
        catch (Exception exception) when (exception is JsonException or InvalidOperationException)
        {
            // Not JSON: the parser says where. Or a name that is not UTF-8: JsonBody says so.
            return null;
        }

        return null;
    }

    /// <summary>The job at <paramref name="index"/>, or its <paramref name="field"/> (none when the job is not an object).</summary>
    private static string Place(int index, string? field) =>
        field is null ? $"{JobsField}[{index}]" : $"{JobsField}[{index}].{field}";

    /// <summary>As <see cref="JsonBody"/> words it for a single job's field.</summary>
    private const string BrokenEscapeError = "Must be valid Unicode text: a \\u escape in it is an unpaired surrogate.";

    /// <summary>Whether the current name or string has <c>\u</c> escapes that do not form valid UTF-16 (reading it throws).</summary>
    private static bool BrokenEscape(ref Utf8JsonReader reader)
    {
        if (!reader.ValueIsEscaped)
        {
            return false;
        }

        try
        {
            reader.GetString();
            return false;
        }
        catch (InvalidOperationException)
        {
            return true;
        }
    }

    /// <summary>
    /// The bytes of each element of the top-level <see cref="JobsField"/> array, as sent. The body was
    /// parsed already: it is one valid object, with that array, named once in whatever casing.
    /// </summary>
    private static List<ReadOnlyMemory<byte>> Elements(byte[] body)
    {
        var elements = new List<ReadOnlyMemory<byte>>();
        var reader = new Utf8JsonReader(body);
        reader.Read();
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var isJobs = string.Equals(reader.GetString(), JobsField, StringComparison.OrdinalIgnoreCase);
            reader.Read();
            if (!isJobs)
            {
                reader.Skip();
                continue;
            }

            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                var start = (int)reader.TokenStartIndex;
                reader.Skip();
                elements.Add(body.AsMemory(start, (int)reader.BytesConsumed - start));
            }
        }

        return elements;
    }
}
