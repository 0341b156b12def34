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
        using var document = JsonBody.ParseObject(body, bodyErrors, JobRequestParser.InvalidJson, out var fault);
        if (document is null)
        {
            // The parser's refusal names the body as a whole, or its top-level field; one inside a job is named by its place.
            if (fault is not null && InJob(fault) is { } field)
            {
                errors.Add(field, fault.ErrorAt(2));
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
    /// Where, in which job, a body the parser refused has a field given twice in one object, or a <c>\u</c> escape that
    /// is half a surrogate pair: the parser says only that the body is not valid JSON (JsonBody names the top-level
    /// <c>jobs</c>), which leaves the client of a batch of a hundred jobs to find the job. The job's field, or the
    /// job's field that holds the fault when it is nested deeper (a webhook's payload), or the job itself (a name of
    /// the job's that cannot be read, a job that is not an object). Null when the fault is not in a job: JsonBody's
    /// words stand then.
    /// </summary>
    private static string? InJob(JsonFault fault) =>
        fault.Path is [{ Name: { } top }, { Name: null } job, ..]
        && string.Equals(top, JobsField, StringComparison.OrdinalIgnoreCase)
            ? fault.Path is [_, _, { Name: { } field }, ..] ? $"{JobsField}[{job.Index}].{field}" : $"{JobsField}[{job.Index}]"
            : null;

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
