using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Spectre.Console;

namespace Conveyor.Cli.Commands;

/// <summary><c>conveyor move &lt;queue&gt;</c>: moves matching messages back and waits, showing progress.</summary>
public sealed class MoveCommand : ConveyorCommand<MoveSettings>
{
    protected override Task<int> RunAsync(CliContext cli, ConveyorClient client, MoveSettings settings, CancellationToken cancellationToken)
    {
        var body = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["filter"] = settings.Filter(),
            ["dryRun"] = settings.DryRun,
        };
        if (settings.Target is not null)
        {
            body["target"] = settings.Target;
        }

        if (settings.Limit is { } limit)
        {
            body["limit"] = limit;
        }

        return Operations.StartAndWaitAsync(cli, client, settings, "move", body, cancellationToken);
    }
}

/// <summary><c>conveyor purge &lt;queue&gt; --confirm &lt;queue&gt;</c>: deletes matching messages.</summary>
public sealed class PurgeCommand : ConveyorCommand<PurgeSettings>
{
    protected override Task<int> RunAsync(CliContext cli, ConveyorClient client, PurgeSettings settings, CancellationToken cancellationToken)
    {
        var body = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["filter"] = settings.Filter(),
            ["dryRun"] = settings.DryRun,
        };
        if (settings.Confirm is not null)
        {
            body["confirm"] = settings.Confirm;
        }

        if (settings.Limit is { } limit)
        {
            body["limit"] = limit;
        }

        return Operations.StartAndWaitAsync(cli, client, settings, "purge", body, cancellationToken);
    }
}

/// <summary><c>conveyor operations</c>: recent moves and purges.</summary>
public sealed class OperationsCommand : ConveyorCommand<OperationsSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, OperationsSettings settings, CancellationToken cancellationToken)
    {
        var query = Query(
            ("queue", settings.Queue), ("state", settings.State), ("limit", settings.Limit?.ToString(CultureInfo.InvariantCulture)),
            ("before", settings.Before?.ToString()));
        var operations = Answers.ExpectArray(await client.GetAsync("api/operations" + query, cancellationToken, OperationsSettings.Options.For), "operations");
        var before = Operations.PageCursor(operations, settings.Limit, "operations");
        if (settings.Json)
        {
            WriteJson(cli, operations);
            return ExitCodes.Ok;
        }

        Operations.WritePage(cli, operations, before);
        return ExitCodes.Ok;
    }

    internal static string Query(params (string Name, string? Value)[] parameters)
    {
        var given = parameters.Where(p => p.Value is not null).Select(p => $"{p.Name}={Uri.EscapeDataString(p.Value!)}").ToList();
        return given.Count == 0 ? "" : "?" + string.Join('&', given);
    }
}

/// <summary><c>conveyor operation &lt;id&gt;</c>: one operation's progress and result.</summary>
public sealed class OperationCommand : ConveyorCommand<OperationSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, OperationSettings settings, CancellationToken cancellationToken)
    {
        var operation = settings.Wait
            ? await Operations.FollowAsync(
                cli, client, settings.Id, showProgress: !settings.Json, Operations.Seconds(settings.Timeout), startedHere: false, cancellationToken)
            : Operations.ExpectShownCounts(
                cli, settings.Id, Operations.ExpectAskedFor(settings.Id, await client.GetAsync($"api/operations/{settings.Id}", cancellationToken)));
        return Operations.Report(cli, operation, settings.Json);
    }
}

/// <summary><c>conveyor audit</c>: who moved or purged what, when.</summary>
public sealed class AuditCommand : ConveyorCommand<AuditSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, AuditSettings settings, CancellationToken cancellationToken)
    {
        var query = OperationsCommand.Query(
            ("queue", settings.Queue), ("requestedBy", settings.Who), ("since", settings.Since), ("limit", settings.Limit?.ToString(CultureInfo.InvariantCulture)),
            ("before", settings.Before?.ToString()));
        var entries = Answers.ExpectArray(await client.GetAsync("api/audit" + query, cancellationToken, AuditSettings.Options.For), "audit entries");
        var before = Operations.PageCursor(entries, settings.Limit, "audit entries");
        if (settings.Json)
        {
            WriteJson(cli, entries);
            return ExitCodes.Ok;
        }

        Operations.WritePage(cli, entries, before);
        return ExitCodes.Ok;
    }
}

internal static class Operations
{
    private const string Running = "running";
    private const string Succeeded = "succeeded";
    private const int IdsShown = 20;

    /// <summary>The Api's page size when no --limit is given.</summary>
    private const int DefaultPageSize = 50;
    private static readonly TimeSpan MaxPollPause = TimeSpan.FromSeconds(10);

    /// <summary>The counts of an operation that the CLI reads (<see cref="Number"/>) for its progress bar and summary.</summary>
    private static readonly string[] Counts = ["queueDepthAtStart", "examined", "matched", "moved", "purged", "failed", "jobsMissing"];

    public static async Task<int> StartAndWaitAsync(
        CliContext cli, ConveyorClient client, FilterSettings settings, string kind, Dictionary<string, object?> body, CancellationToken cancellationToken)
    {
        JsonElement accepted;
        try
        {
            accepted = await client.PostAsync($"api/error-queues/{Uri.EscapeDataString(settings.Queue)}/{kind}", body, cancellationToken, FilterSettings.Options.For);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Ctrl+C with the request on its way: the Api may have taken it, and an operation it started goes on.
            throw new CliFailureException(ExitCodes.Interrupted,
                $"interrupted before the Api answered the request to start the {kind}: it may have started it, and it would go on. "
                + $"See: {cli.Command($"operations {ShellWords.Option("--queue", settings.Queue)} --state running")}");
        }
        catch (CliFailureException failure) when (failure.ExitCode == ExitCodes.Unreachable && failure.RequestSent)
        {
            // Not 5 (try later), which says nothing was started: the Api may have taken the request before the connection
            // broke, the wait for its answer ended or a gateway gave up on it (502, 504), and an operation it started goes on.
            throw new CliFailureException(ExitCodes.StartUnknown,
                $"{failure.Message}{Environment.NewLine}The request to start the {kind} was sent, but the Api's answer never came: it may have started it, "
                + $"and it would go on. Look before starting it again: {cli.Command($"operations {ShellWords.Option("--queue", settings.Queue)} --state running")}");
        }

        var id = StartedId(accepted) ?? throw new CliFailureException(ExitCodes.StartUnknown,
            // Not 6, which a script would take for a start that did nothing: whatever answered took the request as accepted,
            // and the Api may have started the operation without naming it.
            $"{Answers.Unexpected("expected the operation it started: a JSON object with its operationId").Message}{Environment.NewLine}"
            + $"The request to start the {kind} was answered as accepted, but the answer names no operation: it may have started it, "
            + $"and it would go on. Look before starting it again: {cli.Command($"operations {ShellWords.Option("--queue", settings.Queue)} --state running")}");
        try
        {
            ExpectCounts(accepted);
        }
        catch (CliFailureException failure)
        {
            // Accepted: whatever is wrong with the rest of the answer, the operation goes on, and is named.
            throw ProgressUnknown(cli, id, failure);
        }

        if (settings.NoWait)
        {
            if (ConveyorClient.Text(accepted, "state") is { } state && state != Running)
            {
                // Already over: its outcome, as for an operation that was waited for.
                return Report(cli, await ReadAsync(cli, client, id, Stopwatch.GetTimestamp(), timeout: null, known: true, cancellationToken), settings.Json);
            }

            if (settings.Json)
            {
                cli.RawOut.WriteLine(JsonSerializer.Serialize(accepted, ReadableJson.Indented));
            }
            else
            {
                cli.Out.MarkupLine($"Started {kind} [bold]{id}[/].");
            }

            // Not "done" (0): a script must not take a started move for a finished one.
            cli.Err.WriteLine(Printable.Text($"It is running. Follow it with: {cli.Command($"operation {id} --wait")}"));
            return ExitCodes.StillRunning;
        }

        // Said at once: should its progress not be readable later, the operation is not lost (nor started again).
        cli.Err.WriteLine($"Started {kind} {id}.");
        var operation = await FollowAsync(cli, client, id, showProgress: !settings.Json, Seconds(settings.Timeout), startedHere: true, cancellationToken);
        return Report(cli, operation, settings.Json);
    }

    /// <summary>The id of the operation an accepted start names, or null when it names none (no operationId, or one that is not an id).</summary>
    private static Guid? StartedId(JsonElement accepted) =>
        ConveyorClient.Text(accepted, "operationId") is { } text && Guid.TryParse(text, out var id) ? id : null;

    /// <summary>
    /// <see cref="WaitAsync"/>, and on Ctrl+C the words that the operation goes on in the Api, and how to follow it:
    /// stopping the wait stops nothing else, and a script or an operator must not take it for a cancelled move.
    /// </summary>
    /// <param name="startedHere">
    /// Whether this command started the operation (move, purge) rather than being given its id (<c>operation --wait</c>).
    /// </param>
    public static async Task<JsonElement> FollowAsync(
        CliContext cli, ConveyorClient client, Guid id, bool showProgress, TimeSpan? timeout, bool startedHere, CancellationToken cancellationToken)
    {
        try
        {
            return await WaitAsync(cli, client, id, showProgress, timeout, startedHere, cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw new CliFailureException(ExitCodes.Interrupted,
                $"interrupted: stopped waiting for operation {id}, which goes on. Follow it with: {cli.Command($"operation {id} --wait")}");
        }
    }

    public static TimeSpan? Seconds(int? seconds) => seconds is { } s ? TimeSpan.FromSeconds(s) : null;

    /// <summary>
    /// Polls the operation until it ends (an operation whose process died is reported <c>interrupted</c>
    /// by the Api) or <paramref name="timeout"/> passes; with a progress bar on stderr when it is a terminal.
    /// </summary>
    /// <param name="startedHere">Whether the operation is known to exist before its first read: this command started it.</param>
    public static async Task<JsonElement> WaitAsync(
        CliContext cli, ConveyorClient client, Guid id, bool showProgress, TimeSpan? timeout, bool startedHere, CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        // Once the Api has shown the operation, a failure of a later read is a lost view of it, never "no such operation".
        var known = startedHere;
        bool Waited() => timeout is { } limit && Stopwatch.GetElapsedTime(started) >= limit;
        if (!showProgress || !cli.Err.Profile.Capabilities.Interactive)
        {
            while (true)
            {
                var operation = await ReadAsync(cli, client, id, started, timeout, known, cancellationToken);
                known = true;
                if (StateOf(operation) != Running || Waited())
                {
                    return operation;
                }

                await Task.Delay(cli.PollInterval, cancellationToken);
            }
        }

        return await new Progress(cli.Err)
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .StartAsync(async progress =>
            {
                var task = progress.AddTask($"Operation {id}", autoStart: true, maxValue: 1);
                while (true)
                {
                    var operation = await ReadAsync(cli, client, id, started, timeout, known, cancellationToken);
                    known = true;
                    var depth = Number(operation, "queueDepthAtStart");
                    var examined = Number(operation, "examined");
                    task.Description = ProgressDescription(operation);
                    task.MaxValue = Math.Max(1, depth);
                    task.Value = Math.Min(examined, task.MaxValue);
                    if (StateOf(operation) != Running)
                    {
                        // Full only for an operation that did all it set out to (a --limit or a queue that shrank may leave
                        // messages unexamined): one that failed, was cancelled or interrupted, or did only part of its work,
                        // keeps the share it examined, as its summary says, rather than 100 %.
                        if (StateOf(operation) == Succeeded && !IsPartial(operation))
                        {
                            task.Value = task.MaxValue;
                        }

                        task.StopTask();
                        return operation;
                    }

                    if (Waited())
                    {
                        task.StopTask();
                        return operation;
                    }

                    await Task.Delay(cli.PollInterval, cancellationToken);
                }
            });
    }

    /// <summary>
    /// One read of an operation. A failure that may pass (the Api or a gateway unreachable, a 502, 503 or 504, a 429)
    /// is tried again, after the answer's Retry-After or a pause that doubles, for <see cref="CliContext.PollFailureBudget"/>
    /// and never past <paramref name="timeout"/>: ending with "could not reach the Api" (5) would tell a script that
    /// nothing was started, and it would start the move again. Giving up says which operation to follow (9).
    /// <para>
    /// Any other failure of a read of an operation that is <paramref name="known"/> (this command started it, or the Api has
    /// shown it) names it and how to follow it too, as it goes on whatever the read was answered with: a key refused (401,
    /// 403, a lockout) keeps 3, which says what to mend; anything else (a 500, a 404, an answer that is no operation, such
    /// as a proxy's HTML page) says nothing of the operation and ends with 9, never 1 (failed), 4 (no such operation) or 6.
    /// A first read of an id given to <c>operation --wait</c> answered 404 is an id the Api does not know: 4, naming it; an
    /// answer there that is not the Api's is 6, as the address may not be one.
    /// </para>
    /// </summary>
    private static async Task<JsonElement> ReadAsync(
        CliContext cli, ConveyorClient client, Guid id, long started, TimeSpan? timeout, bool known, CancellationToken cancellationToken)
    {
        try
        {
            var operation = await ReadRetryingAsync(cli, client, id, started, timeout, cancellationToken);
            return IsOperation(operation)
                ? ExpectShownCounts(cli, id, ExpectAskedFor(id, operation))
                : throw Answers.Unexpected("expected an operation: a JSON object with operationId and a state");
        }
        catch (CliFailureException failure) when (!known && failure.ExitCode == ExitCodes.NotFoundOrConflict)
        {
            throw new CliFailureException(failure.ExitCode,
                $"{failure.Message}{Environment.NewLine}No operation {id} is known to the Api; `{cli.Command("operations")}` lists the recent ones.");
        }
        catch (CliFailureException failure) when (known && failure.ExitCode == ExitCodes.Auth)
        {
            throw new CliFailureException(ExitCodes.Auth,
                $"{failure.Message}{Environment.NewLine}Operation {id} was started, but this key may not read its progress; it may still be running "
                + $"or have ended. Do not start it again: with a key that may, follow it with: {cli.Command($"operation {id} --wait")}");
        }
        catch (CliFailureException failure) when (failure.ExitCode != ExitCodes.ProgressUnknown
            && (known ? failure.ExitCode != ExitCodes.Auth : failure.ExitCode == ExitCodes.OperationFailed))
        {
            throw ProgressUnknown(cli, id, failure);
        }
    }

    private static CliFailureException ProgressUnknown(CliContext cli, Guid id, CliFailureException failure)
    {
        // An answer that is not the Api's asks whether --api is the address of one; the address that accepted the move, or
        // showed the operation, is: the question is left out, not to send the operator looking for a mistake they did not make.
        var said = failure.ExitCode == ExitCodes.UnexpectedAnswer ? failure.Message.Split(Environment.NewLine)[0] : failure.Message;
        return new(ExitCodes.ProgressUnknown,
            $"{said}{Environment.NewLine}Operation {id} was started, but its progress could not be read; it may still be running "
            + $"or have ended. Do not start it again: follow it with: {cli.Command($"operation {id} --wait")}");
    }

    private static Task<JsonElement> ReadRetryingAsync(
        CliContext cli, ConveyorClient client, Guid id, long started, TimeSpan? timeout, CancellationToken cancellationToken)
    {
        var path = $"api/operations/{id}";
        return new ReadRetry
        {
            // A gateway that cannot reach the Api, a 429 that asks to come back (what exit code 5 means; not a key lockout),
            // or no answer at all.
            MayPass = _ => true,
            Waits = new RetryBudget
            {
                Budget = cli.PollFailureBudget,
                ShortestPause = cli.PollInterval,
                LongestPause = MaxPollPause,
                LongestRetryAfter = MaxPollPause,
                OtherLimitLeft = timeout is { } limit ? () => limit - Stopwatch.GetElapsedTime(started) : null,
            },
            Retrying = (failure, wait) => cli.Err.WriteLine(
                Printable.Text($"Could not read operation {id} ({failure.Message.ReplaceLineEndings(" ")}); trying again in {wait.TotalSeconds:0.#} s.")),
            GiveUp = (failure, _, _) => ProgressUnknown(cli, id, failure),
        }.ReadAsync(
            async token =>
            {
                // Within --timeout: an Api that takes the request and does not answer would otherwise hold the wait for the
                // client's own timeout (100 s) past it. At least one poll interval, so that a read can still be answered.
                using var bounded = CancellationTokenSource.CreateLinkedTokenSource(token);
                if (timeout is { } until)
                {
                    bounded.CancelAfter(TimeSpan.FromTicks(Math.Max((until - Stopwatch.GetElapsedTime(started)).Ticks, cli.PollInterval.Ticks)));
                }

                try
                {
                    return await client.GetAnswerAsync(path, bounded.Token);
                }
                catch (OperationCanceledException) when (bounded.IsCancellationRequested && !token.IsCancellationRequested)
                {
                    throw new CliFailureException(ExitCodes.Unreachable, "The Api did not answer before --timeout passed.");
                }
            },
            cancellationToken);
    }

    /// <summary>
    /// The progress bar's line. Spectre reads a task's description as markup, so the Api's kind and queue are
    /// escaped: a queue named <c>orders[bogus]_error</c> would otherwise end the command with an exception.
    /// </summary>
    internal static string ProgressDescription(JsonElement operation) =>
        Markup.Escape(Printable.Text($"{ConveyorClient.Text(operation, "kind")} {ConveyorClient.Text(operation, "queue")}: "))
        + $"{Number(operation, "examined")} examined, {Number(operation, "moved") + Number(operation, "purged")} done";

    /// <summary>An operation's state; an answer without one is not an operation.</summary>
    private static string StateOf(JsonElement operation) =>
        ConveyorClient.Text(operation, "state") ?? throw new KeyNotFoundException("The answer has no operation state.");

    /// <summary>Prints the outcome; 0 when it succeeded, 8 when it did so only in part, 7 while it still runs, 1 otherwise.</summary>
    public static int Report(CliContext cli, JsonElement operation, bool json)
    {
        ExpectCounts(Answers.ExpectObject(operation, "an operation", "operationId", "state"));
        var state = StateOf(operation);
        var partial = IsPartial(operation);
        if (state == Running)
        {
            cli.Err.WriteLine(Printable.Text(
                $"Still running. Follow it with: {cli.Command($"operation {ShellWords.Quote(ConveyorClient.Text(operation, "operationId") ?? "")} --wait")}"));
        }
        else if (partial)
        {
            cli.Err.MarkupLine(Markup.Escape(
                $"It ended with failures: {Number(operation, "failed")} matched message(s) could not be moved and stayed in the queue, "
                + "or it stopped before examining every message (see its detail)."));
        }

        var missing = Number(operation, "jobsMissing");
        if (missing > 0)
        {
            // Said before a move, above all by a dry run: these messages are no longer deduplicated. A purge runs nothing
            // again: it deletes the last record of those jobs.
            cli.Err.MarkupLine(
                $"[yellow]Warning: {missing} job(s) of the selected messages have no row any more (swept after Retention:JobHours): "
                + (ConveyorClient.Text(operation, "kind") == "purge"
                    ? "their messages are the last record of those jobs, and a purge deletes them for good (it runs nothing again).[/]"
                    : "moving their messages back runs those jobs again, with no deduplication.[/]"));
        }

        if (json)
        {
            cli.RawOut.WriteLine(JsonSerializer.Serialize(operation, ReadableJson.Indented));
        }
        else
        {
            var kind = ConveyorClient.Text(operation, "kind");
            var dryRun = operation.TryGetProperty("dryRun", out var d) && d.ValueKind == JsonValueKind.True;
            var verb = kind == "purge" ? "purged" : "moved";
            // A dry run counts the matches a move could not deliver as failed (a target queue missing).
            var failing = Number(operation, "failed");
            var done = dryRun ? Number(operation, "matched") - failing : Number(operation, verb);
            if (dryRun)
            {
                cli.Out.MarkupLine($"[bold]Dry run[/]: would have {verb} {done} message(s)"
                    + (failing > 0 ? $"; {failing} would fail (see Detail)" : string.Empty) + "; nothing was changed.");
            }
            else
            {
                cli.Out.Write(new Text($"{Printable.Text(kind ?? "operation")} "));
                cli.Out.Write(new Text(Printable.Text(state), Output.Bold));
                cli.Out.WriteLine($": {verb} {done} message(s).");
            }

            var grid = new Grid().AddColumn().AddColumn();
            foreach (var (label, name) in new[]
            {
                ("Operation", "operationId"), ("State", "state"), ("Queue", "queue"), ("Target", "target"), ("Targets", "targets"),
                ("Filter", "filter"), ("Limit", "limit"), ("Examined", "examined"), ("Matched", "matched"), ("Moved", "moved"),
                ("Purged", "purged"), ("Failed", "failed"), ("Left", "left"), ("Jobs missing", "jobsMissing"), ("Requested by", "requestedBy"),
                ("Started", "createdAt"), ("Finished", "finishedAt"), ("Detail", "detail"),
            })
            {
                var value = Output.Plain(operation, name, 500);
                if (value.Length > 0 && value != "{}")
                {
                    grid.AddRow(new Text(label), new Text(value));
                }
            }

            cli.Out.Write(grid);
            if (operation.TryGetProperty("messageIds", out var ids) && ids.GetArrayLength() > 0)
            {
                var shown = ids.EnumerateArray().Take(IdsShown).Select(i => i.GetString()).ToList();
                var more = ids.GetArrayLength() > IdsShown || (operation.TryGetProperty("messageIdsTruncated", out var t) && t.ValueKind == JsonValueKind.True);
                cli.Out.WriteLine(Printable.Text($"Message ids: {string.Join(", ", shown)}{(more ? ", …" : "")}"));
            }
        }

        return state switch
        {
            Succeeded => partial ? ExitCodes.EndedWithFailures : ExitCodes.Ok,
            Running => ExitCodes.StillRunning,
            _ => ExitCodes.OperationFailed,
        };
    }

    /// <summary>
    /// What <c>--before</c> lists the older entries of a full page with: its last entry's operationId; null for a page that is
    /// not full. Checked before anything of the page is printed, with <c>--json</c> too: a full page whose last id is a number
    /// or an object is not the Api's, and would otherwise be shown as if nothing older followed.
    /// </summary>
    public static string? PageCursor(JsonElement page, int? limit, string what)
    {
        var count = page.GetArrayLength();
        if (count == 0 || count < (limit ?? DefaultPageSize))
        {
            return null;
        }

        // Printed as the --before of the command that lists the older entries, which takes an id only: one that is not would
        // make that command end with 2.
        return Guid.TryParse(ConveyorClient.Text(page[count - 1], "operationId"), out var last)
            ? last.ToString()
            : throw Answers.Unexpected($"expected {what}: a full page whose last entry, which --before goes on from, has its operationId an id");
    }

    /// <summary>
    /// The page as a table and, for a full one (<paramref name="before"/>, <see cref="PageCursor"/>), how to list the older
    /// entries, said on stderr so that the table stays alone on stdout. That line is made before the table is printed: an id
    /// no command line can carry (a NUL) is an answer no Conveyor Api gives, which ends with 6 and nothing on stdout.
    /// </summary>
    public static void WritePage(CliContext cli, JsonElement page, string? before)
    {
        var olderEntries = before is null ? null : $"Older entries may follow: add {ShellWords.Option("--before", before)}";
        cli.Out.Write(Table(page));
        if (olderEntries is not null)
        {
            cli.Err.WriteLine(Printable.Text(olderEntries));
        }
    }

    public static Table Table(JsonElement operations)
    {
        var table = new Table().AddColumns("When", "Who", "What", "From", "To", "Matched", "Moved", "Purged", "Failed", "Jobs missing", "State", "Id");
        foreach (var operation in operations.EnumerateArray())
        {
            var what = Output.Plain(operation, "kind") + (operation.TryGetProperty("dryRun", out var d) && d.ValueKind == JsonValueKind.True ? " (dry run)" : "");
            var to = Output.Plain(operation, "target");
            if (to.Length == 0 && operation.TryGetProperty("targets", out var targets) && targets.ValueKind == JsonValueKind.Object)
            {
                to = Printable.Text(string.Join(", ", targets.EnumerateObject().Select(t => t.Name)));
            }

            table.AddRow(
                Output.Cell(operation, "createdAt"), Output.Cell(operation, "requestedBy"), new Text(what), Output.Cell(operation, "queue"), new Text(to),
                Output.Cell(operation, "matched"), Output.Cell(operation, "moved"), Output.Cell(operation, "purged"),
                Output.Cell(operation, "failed"), Output.Cell(operation, "jobsMissing"), Output.Cell(operation, "state"), Output.Cell(operation, "operationId"));
        }

        return table;
    }

    /// <summary>
    /// <paramref name="operation"/>, when each of its counts that the CLI reads is a whole number (or not given, or null):
    /// one such as <c>"moved": 1.5</c> or <c>"moved": "x"</c> is not an operation the Api shows. Checked as it is read, so
    /// that an operation the command started or has shown is named with how to follow it (exit 9), as for any other
    /// answer that says nothing of it, instead of failing later while its progress or summary is drawn.
    /// </summary>
    private static JsonElement ExpectCounts(JsonElement operation)
    {
        foreach (var name in Counts)
        {
            if (operation.TryGetProperty(name, out var value) && value.ValueKind != JsonValueKind.Null
                && !(value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out _)))
            {
                throw Answers.Unexpected($"expected an operation: its {name} a whole number");
            }
        }

        return operation;
    }

    /// <summary>
    /// <paramref name="answer"/> to a read of operation <paramref name="id"/>, checked as <see cref="ExpectCounts"/> checks it
    /// when it shows an operation (its operationId and a state): a count in it that is not a whole number ends with
    /// <see cref="ExitCodes.ProgressUnknown"/>, naming the operation and how to follow it, for a first read as for a later
    /// one, with <c>--wait</c> or without. The Api has shown that the operation exists; only its counts cannot be read. An
    /// answer that is no operation at all is left to the caller (6: the address may not be an Api's).
    /// </summary>
    internal static JsonElement ExpectShownCounts(CliContext cli, Guid id, JsonElement answer)
    {
        if (!IsOperation(answer))
        {
            return answer;
        }

        try
        {
            return ExpectCounts(answer);
        }
        catch (CliFailureException failure)
        {
            throw ProgressUnknown(cli, id, failure);
        }
    }

    /// <summary>
    /// <paramref name="answer"/> to a read of operation <paramref name="id"/>, unless it shows another operation (its
    /// operationId another id, or no id at all): the Api answers a read of an operation with that operation, so such an answer
    /// comes from something else at its address (a proxy or cache that mixes up paths, a wrong base URL) and says nothing of
    /// the one asked for. It ends as any answer the Api does not give does (<see cref="ExitCodes.UnexpectedAnswer"/>, or
    /// <see cref="ExitCodes.ProgressUnknown"/> for an operation started or shown), naming both ids. An answer that is no
    /// operation at all is left to the caller.
    /// </summary>
    internal static JsonElement ExpectAskedFor(Guid id, JsonElement answer) =>
        IsOperation(answer) ? Answers.ExpectAskedFor(answer, "operation", "operationId", id) : answer;

    /// <summary>Whether an answer has the shape of an operation: an object with its operationId and a state.</summary>
    private static bool IsOperation(JsonElement answer) =>
        ConveyorClient.Text(answer, "state") is not null && answer.TryGetProperty("operationId", out _);

    /// <summary>
    /// A <c>succeeded</c> operation that did only part of its work: matched messages it could not move, or a walk that
    /// stopped early. An Api of an earlier version does not say "partial"; failures it does count.
    /// </summary>
    private static bool IsPartial(JsonElement operation) =>
        StateOf(operation) == Succeeded
        && ((operation.TryGetProperty("partial", out var p) && p.ValueKind == JsonValueKind.True) || Number(operation, "failed") > 0);

    private static long Number(JsonElement json, string name) =>
        json.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Number ? value.GetInt64() : 0;
}
