using System.ComponentModel;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Conveyor.Cli.Commands;

public sealed class SubmitSettings : ApiSettings
{
    public const int MaxBatchSize = 100;

    [CommandArgument(0, "<kind>")]
    [Description("The jobs' kind: charge-payment, deliver-webhook or generate-report.")]
    public string Kind { get; set; } = "";

    [CommandArgument(1, "[file]")]
    [Description("The jobs, each as POST /api/jobs/<kind> takes it: a JSON array of objects, or JSON lines (one object per line); without a file, standard input.")]
    public string? File { get; set; }

    [CommandOption("--batch-size <N>")]
    [Description("Jobs per request, 1 to 100 (default 100; the Api allows no more than the key's rate-limit burst).")]
    public int BatchSize { get; set; } = MaxBatchSize;

    [CommandOption("--retries <N>")]
    [Description("How often to send a batch again after a 429, 502, 503, 504 or 409 \"Submission in progress\", each time after the wait the Api asks for (default 5); a batch waits two minutes in all at most.")]
    public int Retries { get; set; } = 5;

    /// <summary>
    /// An empty kind (<c>submit "$KIND" jobs.jsonl</c> with KIND unset) names none, as an empty queue argument names no queue:
    /// sent, it would be <c>POST api/jobs//batch</c>, whose answer says nothing of the jobs.
    /// </summary>
    public override ValidationResult Validate() =>
        string.IsNullOrWhiteSpace(Kind) ? ValidationResult.Error("The kind is empty: name the jobs' kind, such as charge-payment (an unset variable?). Nothing was sent.")
        : BatchSize is < 1 or > MaxBatchSize ? ValidationResult.Error($"--batch-size must be from 1 to {MaxBatchSize}.")
        : Retries is < 0 or > 100 ? ValidationResult.Error("--retries must be from 0 to 100.")
        : ValidationResult.Success();
}

/// <summary>
/// <c>conveyor submit &lt;kind&gt; [file]</c>: submits many jobs through <c>POST /api/jobs/{kind}/batch</c>,
/// a batch at a time. Running the same file again is safe: every job carries its business id, so a
/// job accepted before is answered again, not submitted twice.
/// </summary>
public sealed partial class SubmitCommand : ConveyorCommand<SubmitSettings>
{
    /// <summary>Jobs listed in a table; <c>--json</c> lists every one.</summary>
    private const int MaxRows = 50;

    /// <summary>The wait before a batch is sent again when the answer asks for none, and the shortest of any.</summary>
    private static readonly TimeSpan ShortestWait = TimeSpan.FromSeconds(1);

    /// <summary>The title of the Api's refusal of a job whose earlier submission is still in progress (<c>JobsApi.RefusalOf</c>).</summary>
    private const string SubmissionInProgressTitle = "Submission in progress";

    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, SubmitSettings settings, CancellationToken cancellationToken)
    {
        if (settings.File is null && !Console.IsInputRedirected)
        {
            throw new CliFailureException(ExitCodes.Usage, "Give a file of jobs, or pipe them in: conveyor submit <kind> jobs.jsonl");
        }

        await using var input = settings.File is null ? Console.OpenStandardInput() : OpenFile(settings.File);

        // Every answer for --json; for the table, only the rows it shows, so a long file stays cheap.
        var accepted = new List<(string Source, JsonElement Job)>();
        var acceptedCount = 0;
        string? lastAccepted = null;
        var batches = 0;
        // The batch sent and not yet answered: on Ctrl+C, the Api may have accepted it, in full or in part.
        JobFile.Job[]? sending = null;
        await using var reading = JobFile.ReadBatchesAsync(input, settings.BatchSize, cancellationToken).GetAsyncEnumerator(cancellationToken);
        try
        {
            while (await NextBatchAsync(reading, acceptedCount) is { } batch)
            {
                sending = batch;
                var answer = await SendAsync(cli, client, settings, batch, acceptedCount, cancellationToken);
                sending = null;
                batches++;
                var answers = answer.Body.GetProperty("jobs").EnumerateArray().ToList();
                if (answers.Count != batch.Length)
                {
                    throw new FormatException($"The Api answered {answers.Count} jobs for a batch of {batch.Length}.");
                }

                var kept = settings.Json ? batch.Length : Math.Clamp(MaxRows - accepted.Count, 0, batch.Length);
                accepted.AddRange(batch.Take(kept).Select((job, index) => (job.Source, answers[index].Clone())));
                acceptedCount += batch.Length;
                lastAccepted = batch[^1].Source;
                cli.Err.MarkupLine(Markup.Escape($"{acceptedCount} jobs accepted so far"));
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw Interrupted(cli, settings, accepted, acceptedCount, lastAccepted, sending);
        }

        if (batches == 0)
        {
            throw new CliFailureException(ExitCodes.Usage, "The file holds no jobs.");
        }

        if (settings.Json)
        {
            WriteJson(cli, JsonSerializer.SerializeToElement(JobList(accepted)));
            return ExitCodes.Ok;
        }

        WriteTable(cli, accepted, acceptedCount);
        cli.Out.MarkupLine(Markup.Escape($"{acceptedCount} {settings.Kind} jobs accepted in {batches} {(batches == 1 ? "request" : "requests")}."));
        return ExitCodes.Ok;
    }

    /// <summary>
    /// Ctrl+C: what the Api accepted before it (the table, or with <c>--json</c> a summary: <c>interrupted</c>, the
    /// <c>accepted</c> count, every accepted job, and the batch <c>inFlight</c>, null when none was), and on stderr how
    /// many, from where to where, and which jobs may have been accepted without an answer, so that the user knows what
    /// is left to send; sending the whole file again is safe.
    /// </summary>
    private static CliFailureException Interrupted(
        CliContext cli, SubmitSettings settings, List<(string Source, JsonElement Job)> accepted, int acceptedCount, string? lastAccepted, JobFile.Job[]? sending)
    {
        if (settings.Json)
        {
            WriteJson(cli, JsonSerializer.SerializeToElement(new
            {
                interrupted = true,
                accepted = acceptedCount,
                jobs = JobList(accepted),
                inFlight = sending is null ? null : new { from = sending[0].Source, to = sending[^1].Source },
            }));
        }
        else if (acceptedCount > 0)
        {
            WriteTable(cli, accepted, acceptedCount);
        }

        var lines = new List<string>
        {
            acceptedCount == 0
                ? "interrupted: no job was accepted."
                : $"interrupted: {acceptedCount} {settings.Kind} jobs were accepted ({accepted[0].Source} to {lastAccepted}), listed on stdout.",
        };
        if (sending is not null)
        {
            lines.Add($"{sending[0].Source} to {sending[^1].Source} were being sent: the Api may have accepted some or all of them.");
        }

        lines.Add("Running the same command again is safe: jobs accepted before are answered again, not submitted twice.");
        return new CliFailureException(ExitCodes.Interrupted, string.Join(Environment.NewLine, lines));
    }

    /// <summary>The accepted jobs as <c>--json</c> lists them: where each is in the file, its id, kind and status.</summary>
    private static IEnumerable<object> JobList(List<(string Source, JsonElement Job)> accepted) =>
        accepted.Select(a => new
        {
            source = a.Source,
            jobId = a.Job.GetProperty("jobId").GetGuid(),
            kind = a.Job.GetProperty("kind").GetString(),
            status = a.Job.GetProperty("status").GetString(),
        });

    /// <summary>The accepted jobs as a table, at most <see cref="MaxRows"/> of them.</summary>
    private static void WriteTable(CliContext cli, List<(string Source, JsonElement Job)> accepted, int acceptedCount)
    {
        var table = new Table().AddColumns("From", "Job", "Status");
        foreach (var (source, job) in accepted)
        {
            table.AddRow(new Text(source), Output.Cell(job, "jobId"), Output.Cell(job, "status"));
        }

        cli.Out.Write(table);
        if (acceptedCount > accepted.Count)
        {
            cli.Out.MarkupLine(Markup.Escape($"… and {acceptedCount - accepted.Count} more (--json lists every job)."));
        }
    }

    /// <summary>The next batch of the file, or null at its end; a bad line after accepted jobs says how far the file got.</summary>
    private static async Task<JobFile.Job[]?> NextBatchAsync(IAsyncEnumerator<JobFile.Job[]> reading, int acceptedBefore)
    {
        try
        {
            return await reading.MoveNextAsync() ? reading.Current : null;
        }
        catch (CliFailureException failure) when (acceptedBefore > 0)
        {
            throw new CliFailureException(failure.ExitCode, failure.Message + Environment.NewLine + AcceptedBefore(acceptedBefore));
        }
    }

    private static string AcceptedBefore(int count) =>
        $"The {count} jobs before it were accepted. Running the same command again (once it is fixed) is safe: jobs accepted before are answered again, not submitted twice.";

    /// <summary>
    /// Sends one batch, again after a 429, 502, 503, 504 or a 409 for a submission in progress as often as allowed, each time after the whole Retry-After: sooner would
    /// only be refused again, spending a retry and one of the key's permits. The waits of a batch end within
    /// <see cref="CliContext.PollFailureBudget"/> of its first refusal (as a read's do): a wait asked for past it ends the
    /// command at once, saying when to send again. The accepted answer, or a failure that says where the file stands.
    /// </summary>
    private static async Task<ConveyorClient.Answer> SendAsync(
        CliContext cli, ConveyorClient client, SubmitSettings settings, JobFile.Job[] batch, int acceptedBefore, CancellationToken cancellationToken)
    {
        var body = new StringBuilder("{\"jobs\":[").AppendJoin(',', batch.Select(j => j.Json)).Append("]}").ToString();
        var path = $"api/jobs/{Escape(settings.Kind)}/batch";
        var waits = new RetryBudget { Budget = cli.PollFailureBudget, ShortestPause = ShortestWait, LongestPause = ShortestWait };
        for (var attempt = 1; ; attempt++)
        {
            var answer = await client.PostRawAsync(path, body, cancellationToken);
            if (answer.Status == HttpStatusCode.Accepted)
            {
                return answer;
            }

            // A gateway's 502 or 504 leaves unknown whether the Api took the batch; sending it again is safe all the same,
            // as every job carries its business id: a job accepted before is answered again, not submitted twice.
            var inProgress = IsSubmissionInProgress(answer);
            var mayPass = (answer.Status is HttpStatusCode.TooManyRequests or HttpStatusCode.ServiceUnavailable
                or HttpStatusCode.BadGateway or HttpStatusCode.GatewayTimeout && !answer.IsKeyLockout) || inProgress;
            TimeSpan? tooLong = null;
            if (mayPass && attempt <= settings.Retries)
            {
                var (wait, _, fits) = waits.Next(answer.RetryAfter);
                if (fits)
                {
                    cli.Err.MarkupLine(Markup.Escape(
                        $"The Api answered {(int)answer.Status} for {batch[0].Source} to {batch[^1].Source}; sending them again in {wait.TotalSeconds:0} s ({attempt} of {settings.Retries})."));
                    await Task.Delay(wait, cancellationToken);
                    continue;
                }

                tooLong = wait;
            }

            var failure = answer.Failure(field => Source(field, batch));
            var lines = new List<string> { failure.Message };
            if (tooLong is { } asks)
            {
                // A gateway's Retry-After date may lie thousands of years ahead of its Date: no time to name then.
                var until = DateTimeOffset.MaxValue - DateTimeOffset.UtcNow > asks
                    ? $"until {(DateTimeOffset.UtcNow + asks).ToString("u", CultureInfo.InvariantCulture)}"
                    : "past any date";
                lines.Add($"The Api asks to wait {asks.TotalSeconds:0} s ({until}), "
                    + $"longer than submit waits for a batch ({cli.PollFailureBudget.TotalSeconds:0} s in all): send them again then, not sooner.");
            }
            else if (mayPass)
            {
                lines.Add($"Still refused after {settings.Retries} {(settings.Retries == 1 ? "retry" : "retries")}: try again later.");
            }

            lines.AddRange(Refused(answer.Body, batch));
            // A partial answer (ADR 0009) leaves the batch's other jobs accepted: said, so nobody takes them for lost.
            var acceptedHere = AcceptedOfPartial(answer.Body, batch);
            if (acceptedHere.Count > 0)
            {
                lines.Add($"Accepted from this batch ({acceptedHere.Count} of {batch.Length}): {string.Join(", ", acceptedHere)}.");
            }

            lines.Add(acceptedBefore == 0 ? "No job was accepted before this batch." : AcceptedBefore(acceptedBefore));
            // A submission still in progress is no conflict to resolve, only to wait out: try later, as after a 503.
            throw new CliFailureException(inProgress ? ExitCodes.Unreachable : failure.ExitCode, string.Join(Environment.NewLine, lines));
        }
    }

    /// <summary>
    /// The Api's 409 "Submission in progress" for a batch (<c>SubmitStatus.InFlight</c>): an earlier request for a job, such
    /// as one a 504 cut off, still holds its key, and only a retry is needed. Every refused job must say so: any other
    /// refusal outranks it in the answer's status (a reused key is 422), so a 409 that names another is a real conflict.
    /// </summary>
    private static bool IsSubmissionInProgress(ConveyorClient.Answer answer)
    {
        if (answer.Status != HttpStatusCode.Conflict || !answer.IsProblem
            || !answer.Body.TryGetProperty("jobs", out var jobs) || jobs.ValueKind != JsonValueKind.Array)
        {
            return false;
        }

        var errors = jobs.EnumerateArray()
            .Where(job => job.ValueKind == JsonValueKind.Object)
            .Select(job => job.TryGetProperty("error", out var error) ? error : default)
            .Where(error => error.ValueKind != JsonValueKind.Undefined)
            .ToList();
        return errors.Count > 0 && errors.All(error => error.ValueKind == JsonValueKind.Object
            && error.TryGetProperty("status", out var status) && status.ValueKind == JsonValueKind.Number
            && status.TryGetInt32(out var code) && code == (int)HttpStatusCode.Conflict
            && ConveyorClient.Text(error, "title") == SubmissionInProgressTitle);
    }

    /// <summary>A batch's field name (<c>jobs[3].amountMinor</c>) as the place in the file (<c>line 12: amountMinor</c>).</summary>
    private static string Source(string field, JobFile.Job[] batch)
    {
        var match = BatchField().Match(field);
        return match.Success && int.TryParse(match.Groups["index"].Value, CultureInfo.InvariantCulture, out var index) && index < batch.Length
            ? batch[index].Source + (match.Groups["rest"].Success ? $": {match.Groups["rest"].Value}" : "")
            : field;
    }

    /// <summary>The jobs a partial answer refused, each with its status and title.</summary>
    private static IEnumerable<string> Refused(JsonElement problem, JobFile.Job[] batch)
    {
        if (problem.ValueKind != JsonValueKind.Object || !problem.TryGetProperty("jobs", out var jobs) || jobs.ValueKind != JsonValueKind.Array)
        {
            yield break;
        }

        foreach (var job in jobs.EnumerateArray())
        {
            if (!job.TryGetProperty("error", out var error))
            {
                continue;
            }

            var index = job.GetProperty("index").GetInt32();
            if (index < 0 || index >= batch.Length)
            {
                // Not an answer the Api gives for this batch (IsUnexpectedShape: exit code 6).
                throw new FormatException($"The Api refused job {index} of a batch of {batch.Length}.");
            }

            yield return $"  {batch[index].Source}: {error.GetProperty("status").GetInt32()} {ConveyorClient.Text(error, "title")}";
        }
    }

    /// <summary>The jobs a partial answer accepted, each as its place in the file and its job id.</summary>
    private static List<string> AcceptedOfPartial(JsonElement problem, JobFile.Job[] batch)
    {
        if (problem.ValueKind != JsonValueKind.Object || !problem.TryGetProperty("jobs", out var jobs) || jobs.ValueKind != JsonValueKind.Array)
        {
            return [];
        }

        // Refused() has checked every refused job's index; an accepted one's is checked here.
        return [.. jobs.EnumerateArray()
            .Where(job => job.ValueKind == JsonValueKind.Object && !job.TryGetProperty("error", out _))
            .Select(job => (Index: job.GetProperty("index").GetInt32(), JobId: ConveyorClient.Text(job, "jobId")))
            .Select(job => job.Index >= 0 && job.Index < batch.Length
                ? $"{batch[job.Index].Source} (job {job.JobId})"
                : throw new FormatException($"The Api accepted job {job.Index} of a batch of {batch.Length}."))];
    }

    private static FileStream OpenFile(string path)
    {
        try
        {
            return File.OpenRead(path);
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            // ArgumentException: an empty path ("$JOBS" unset) or one with a NUL in it.
            throw new CliFailureException(ExitCodes.Usage,
                path.Length == 0 ? "The file name is empty."
                // .NET's words for a directory are "Access to the path … is denied".
                : Directory.Exists(path) ? $"Cannot read {path}: it is a directory; give a file of jobs (JSON lines or a JSON array)."
                : $"Cannot read {path}: {exception.Message}");
        }
    }

    [GeneratedRegex(@"^jobs\[(?<index>\d+)\](?:\.(?<rest>.+))?$", RegexOptions.CultureInvariant)]
    private static partial Regex BatchField();
}

/// <summary>
/// A file of jobs, read a batch at a time so that a file of any length is sent in bounded memory:
/// JSON lines with one object per line (blank lines skipped), or a JSON array of objects.
/// </summary>
internal static class JobFile
{
    /// <summary>One job: where it is in the file (<c>line 7</c>, <c>item 3</c>) and its JSON, checked to be one object.</summary>
    public sealed record Job(string Source, string Json);

    /// <summary>
    /// The jobs in batches of <paramref name="size"/>. A job that is not one JSON object, or that the Api
    /// would refuse without naming it (<see cref="BatchBodyRules"/>), ends the reading with a usage error
    /// naming it; the batches before it have been yielded (and sent).
    /// </summary>
    public static async IAsyncEnumerable<Job[]> ReadBatchesAsync(
        Stream input, int size, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        // The first byte that is not blank tells the format: '[' starts an array, a JSON line is an object.
        var head = new MemoryStream();
        int first;
        while ((first = await ReadByteAsync(input, cancellationToken)) >= 0)
        {
            head.WriteByte((byte)first);
            if (first is not (' ' or '\t' or '\r' or '\n' or 0xEF or 0xBB or 0xBF))
            {
                break;
            }
        }

        var whole = new PrefixedStream(head.ToArray(), input);
        var jobs = first == '[' ? FromArrayAsync(whole, cancellationToken) : FromLinesAsync(whole, cancellationToken);
        var batch = new List<Job>(size);
        await foreach (var job in jobs)
        {
            batch.Add(job);
            if (batch.Count == size)
            {
                yield return [.. batch];
                batch.Clear();
            }
        }

        if (batch.Count > 0)
        {
            yield return [.. batch];
        }
    }

    private static async IAsyncEnumerable<Job> FromLinesAsync(Stream input, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        // Bytes that are not UTF-8 are refused, not read as U+FFFD: the job would be submitted with text the file never held.
        using var reader = new StreamReader(input, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true), detectEncodingFromByteOrderMarks: true, leaveOpen: true);
        var number = 0;
        while (true)
        {
            string? line;
            try
            {
                line = await reader.ReadLineAsync(cancellationToken);
            }
            catch (DecoderFallbackException exception)
            {
                // Decoded a block at a time: the bytes are in the next line or one soon after it.
                throw new CliFailureException(ExitCodes.Usage, $"The file is not valid UTF-8 at line {number + 1} or a line after it (save it as UTF-8): {exception.Message}");
            }

            if (line is null)
            {
                yield break;
            }

            number++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            using var document = ParseJson(line, $"line {number}");
            yield return Object(document.RootElement, $"line {number}");
        }
    }

    private static async IAsyncEnumerable<Job> FromArrayAsync(Stream input, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var elements = JsonSerializer.DeserializeAsyncEnumerable<JsonElement>(input, cancellationToken: cancellationToken).GetAsyncEnumerator(cancellationToken);
        await using (elements)
        {
            for (var index = 1; ; index++)
            {
                try
                {
                    if (!await elements.MoveNextAsync())
                    {
                        yield break;
                    }
                }
                catch (JsonException exception)
                {
                    throw new CliFailureException(ExitCodes.Usage, $"The file is not valid JSON after item {index - 1}: {exception.Message}");
                }

                yield return Object(elements.Current, $"item {index}");
            }
        }
    }

    private static async ValueTask<int> ReadByteAsync(Stream input, CancellationToken cancellationToken)
    {
        var one = new byte[1];
        return await input.ReadAsync(one, cancellationToken) == 0 ? -1 : one[0];
    }

    private static Job Object(JsonElement element, string source) =>
        element.ValueKind != JsonValueKind.Object
            ? throw new CliFailureException(ExitCodes.Usage, $"{source}: a job must be a JSON object, not {element.ValueKind.ToString().ToLowerInvariant()}.")
            : BatchBodyRules.FirstProblem(element) is { } problem
                ? throw new CliFailureException(ExitCodes.Usage, $"{source}: {problem}")
                : new Job(source, element.GetRawText());

    private static JsonDocument ParseJson(string text, string source)
    {
        try
        {
            return JsonDocument.Parse(text);
        }
        catch (JsonException exception)
        {
            throw new CliFailureException(ExitCodes.Usage, $"{source} is not valid JSON: {exception.Message}");
        }
    }

    /// <summary>The bytes already read to tell the format, then the rest of the input.</summary>
    private sealed class PrefixedStream(byte[] prefix, Stream rest) : Stream
    {
        private int _offset;

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => false;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            var fromPrefix = TakePrefix(buffer);
            return fromPrefix > 0 ? fromPrefix : rest.Read(buffer);
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            var fromPrefix = TakePrefix(buffer.Span);
            return fromPrefix > 0 ? fromPrefix : await rest.ReadAsync(buffer, cancellationToken);
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        private int TakePrefix(Span<byte> buffer)
        {
            var count = Math.Min(buffer.Length, prefix.Length - _offset);
            prefix.AsSpan(_offset, count).CopyTo(buffer);
            _offset += count;
            return count;
        }
    }
}
