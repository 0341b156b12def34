using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Conveyor.Cli.Commands;

public sealed class JobSettings : ApiSettings
{
    [CommandArgument(0, "<job-id>")]
    [Description("The job's id (the jobId of a submission).")]
    public Guid Id { get; set; }

    /// <summary>The longest a single read of the job is held by the Api (its <c>JobsApi.MaxWaitSeconds</c>); a longer wait is made of such reads.</summary>
    public const int LongestReadSeconds = 30;

    [CommandOption("--wait <SECONDS>")]
    [Description("Wait up to this many seconds (0 to 2592000, 30 days) for the job to end (succeeded, dead-lettered or cancelled).")]
    public int? Wait { get; set; }

    public override ValidationResult Validate() =>
        Wait is < 0 or > FilterSettings.MaxTimeoutSeconds
            ? ValidationResult.Error($"--wait must be from 0 to {FilterSettings.MaxTimeoutSeconds} seconds (30 days).")
            : ValidationResult.Success();
}

public sealed class JobsSettings : ApiSettings
{
    public const string NewestFirst = "newest";
    public const string OldestFirst = "oldest";

    /// <summary>The Api's page size when no --limit is given.</summary>
    public const int DefaultPageSize = 50;

    /// <summary>How long <c>--follow</c> waits after a page that was not full, when no <c>--interval</c> is given.</summary>
    public const int DefaultIntervalSeconds = 5;

    /// <summary>The longest <c>--interval</c>: an hour, the longest settle horizon the Api takes.</summary>
    public const int MaxIntervalSeconds = 3600;

    [CommandOption("--status <STATUS>")]
    [Description("Only jobs in this status (scheduled, queued, running, retry-scheduled, succeeded, dead-lettered, cancelled).")]
    public string? Status { get; set; }

    [CommandOption("--kind <KIND>")]
    [Description("Only jobs of this kind (charge-payment, deliver-webhook, generate-report).")]
    public string? Kind { get; set; }

    [CommandOption("--business-key <KEY>")]
    [Description("The job whose command has this business key (a paymentId, webhookId or reportId); needs --kind.")]
    public string? BusinessKey { get; set; }

    [CommandOption("--limit <N>")]
    [Description("At most this many per page (default 50, at most 500).")]
    public int? Limit { get; set; }

    [CommandOption("--order <ORDER>")]
    [Description("newest (the default without --follow): newest first, a job as soon as it is submitted. oldest (the default with --follow, "
        + "the only order it takes): oldest first, only jobs older than the Api's settle horizon (Jobs:ListingSettleSeconds, 60 s by default), "
        + "a feed that misses none when polled with --after.")]
    public string? Order { get; set; }

    [CommandOption("--after <CURSOR>")]
    [Description("Go on from this cursor: the one the previous page printed (its nextCursor), unchanged.")]
    public string? After { get; set; }

    [CommandOption("--follow")]
    [Description("Keep polling oldest first (--order newest cannot be followed), printing each job once as it settles, until Ctrl+C. "
        + "A read refused with 429, 502, 503 or 504, or unanswered after the first page, is tried again until it passes (see --retry-for).")]
    public bool Follow { get; set; }

    [CommandOption("--interval <SECONDS>")]
    [Description("With --follow: seconds to wait after a page that was not full before polling again (default 5, 1 to 3600).")]
    public int? Interval { get; set; }

    [CommandOption("--retry-for <SECONDS>")]
    [Description("With --follow: give up (exit 5) once reads have been refused (429, 502, 503, 504, or no answer after the first page) for this "
        + "many seconds, 1 to 2592000 (30 days). Without it, --follow keeps trying until they pass or Ctrl+C.")]
    public int? RetryFor { get; set; }

    /// <summary>The query parameters of <c>GET /api/jobs</c>, named in a 400's errors, as the options that give them (<c>cursor</c>: <c>--after</c>).</summary>
    internal static readonly OptionNames Options = new(
        ("status", "--status"), ("kind", "--kind"), ("businessKey", "--business-key"), ("limit", "--limit"), ("order", "--order"), ("cursor", "--after"));

    /// <summary>Oldest first: asked for with <c>--order oldest</c>, or by <c>--follow</c> without <c>--order</c>, as only that order can be followed.</summary>
    public bool OldestFirstOrder => Order == OldestFirst || (Order is null && Follow);

    /// <summary>The Api's <c>order</c> parameter: as given, or <c>oldest</c> when following; null (the Api's newest first) otherwise.</summary>
    public string? OrderQuery => OldestFirstOrder ? OldestFirst : Order;

    /// <summary>
    /// Whether <paramref name="cursor"/> is one <c>--after</c> takes: the Api's cursors are base64url, never empty. A page's
    /// nextCursor is held to the same rule (it is printed as the <c>--after</c> of the command to go on with).
    /// </summary>
    internal static bool IsCursor(string cursor) => cursor.Length > 0 && cursor.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_');

    public override ValidationResult Validate()
    {
        if (BusinessKey is not null && Kind is null)
        {
            return ValidationResult.Error("--business-key needs --kind.");
        }

        if (Limit is < 1)
        {
            return ValidationResult.Error("--limit must be at least 1.");
        }

        if (Order is not null and not NewestFirst and not OldestFirst)
        {
            return ValidationResult.Error($"--order must be {NewestFirst} (the default) or {OldestFirst}; '{Printable.Text(Order)}' is not.");
        }

        // The Api's cursor is base64url: a stray quote, space or line break pasted with it is said here, naming the option.
        if (After is not null && !IsCursor(After))
        {
            return ValidationResult.Error(
                $"--after must be a cursor a page of 'conveyor jobs' printed (letters, digits, '-' and '_'), unchanged; '{Printable.Text(After)}' is not.");
        }

        if (Follow && !OldestFirstOrder)
        {
            return ValidationResult.Error(
                "--follow cannot be given --order newest: newest first, the cursor only moves to older jobs and would never reach a new one. "
                + "Leave --order out (--follow follows oldest first).");
        }

        if (Interval is not null && !Follow)
        {
            return ValidationResult.Error("--interval needs --follow.");
        }

        if (RetryFor is not null && !Follow)
        {
            return ValidationResult.Error("--retry-for needs --follow.");
        }

        if (RetryFor is < 1 or > FilterSettings.MaxTimeoutSeconds)
        {
            return ValidationResult.Error($"--retry-for must be from 1 to {FilterSettings.MaxTimeoutSeconds} seconds (30 days).");
        }

        return Interval is < 1 or > MaxIntervalSeconds
            ? ValidationResult.Error($"--interval must be from 1 to {MaxIntervalSeconds} seconds.")
            : ValidationResult.Success();
    }
}

/// <summary><c>conveyor job &lt;id&gt; [--wait N]</c>: one job's status, attempts and last error.</summary>
public sealed class JobCommand : ConveyorCommand<JobSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, JobSettings settings, CancellationToken cancellationToken)
    {
        var job = settings.Wait is { } seconds
            ? await WaitAsync(client, settings.Id, TimeSpan.FromSeconds(seconds), cancellationToken)
            : await ReadAsync(client, settings.Id, "", cancellationToken);
        var status = ConveyorClient.Text(job, "status");
        var exitCode = settings.Wait is null ? ExitCodes.Ok : WaitOutcome(status);
        if (settings.Json)
        {
            WriteJson(cli, job);
            return exitCode;
        }

        // The command to move it back is made before the view is printed: a kind no command line can carry (a NUL) is an
        // answer no Conveyor Api gives, which ends with 6 and nothing on stdout.
        var moveBack = status == "dead-lettered" && ConveyorClient.Text(job, "kind") is { } kind
            ? $"Its command is in {kind}_error. Move it back with: {cli.Command($"move {ShellWords.Queue($"{kind}_error")} --job-id {settings.Id}")}"
            : null;
        WriteJob(cli, job);
        if (moveBack is not null)
        {
            cli.Out.WriteLine(Printable.Text(moveBack));
        }
        else if (status == "succeeded")
        {
            cli.Out.WriteLine(Printable.Text($"See what it did with: {cli.Command($"result {settings.Id}")}"));
        }
        else if (status == "retry-scheduled")
        {
            cli.Out.WriteLine(Printable.Text($"Its next attempt waits for its time. Run it now with: {cli.Command($"run-now {settings.Id}")}"));
        }
        else if (status == "scheduled" || (status == "queued" && ConveyorClient.Text(job, "lastError") is null
            && job.TryGetProperty("attempts", out var attempts) && attempts.ValueKind == JsonValueKind.Number && attempts.TryGetInt32(out var count) && count == 0))
        {
            // As the Api decides: not for a job queued again after an attempt was cut short, which has started.
            cli.Out.WriteLine(Printable.Text($"It has not started. Cancel it with: {cli.Command($"cancel {settings.Id}")}"
                + (status == "scheduled" ? $" (or run it now: {cli.Command($"run-now {settings.Id}")})" : "")));
        }

        return exitCode;
    }

    /// <summary>
    /// A read of job <paramref name="id"/>. The Api answers it with that job: an answer that shows another (a proxy or cache that
    /// mixes up paths, a wrong <c>--api</c>) says nothing of the one asked for, and would be shown as it, its status deciding the
    /// exit code of <c>job --wait</c> and whether <c>result --wait</c> goes on; it ends with 6 naming both, as <c>operation</c> does.
    /// </summary>
    private static async Task<JsonElement> ReadAsync(ConveyorClient client, Guid id, string query, CancellationToken cancellationToken) =>
        Answers.ExpectAskedFor(
            Answers.ExpectObject(await client.GetAsync($"api/jobs/{id}{query}", cancellationToken), "a job", "jobId", "status"), "job", "jobId", id);

    /// <summary>
    /// The job once it has ended, or as it is when <paramref name="wait"/> is over. The Api holds a read for at most
    /// <see cref="JobSettings.LongestReadSeconds"/>, so a longer wait is a row of such reads, each asking for what is left
    /// (at most that). A read answered sooner than it asked while the job goes on (an Api stopping, which answers its
    /// held reads at once, or one holding as many as it allows, <c>Jobs:MaxConcurrentWaits</c>, which answers at once with
    /// <c>Conveyor-Wait-Skipped</c>) is followed by a pause of a second, so that reads never come faster than one a second; a pause
    /// that would reach the end of the wait ends it with a last look.
    /// </summary>
    internal static async Task<JsonElement> WaitAsync(ConveyorClient client, Guid id, TimeSpan wait, CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        while (true)
        {
            var left = wait - Stopwatch.GetElapsedTime(started);
            var asked = (int)Math.Clamp(Math.Ceiling(left.TotalSeconds), 0, JobSettings.LongestReadSeconds);
            var readStarted = Stopwatch.GetTimestamp();
            var job = await ReadAsync(client, id, $"?waitSeconds={asked.ToString(CultureInfo.InvariantCulture)}", cancellationToken);
            left = wait - Stopwatch.GetElapsedTime(started);
            if (asked == 0 || left <= TimeSpan.Zero || WaitOutcome(ConveyorClient.Text(job, "status")) != ExitCodes.StillRunning)
            {
                return job;
            }

            var pause = TimeSpan.FromSeconds(1) - Stopwatch.GetElapsedTime(readStarted);
            if (pause >= left)
            {
                // The wait ends within the pause: a last look at its end.
                await Task.Delay(left, cancellationToken);
                return await ReadAsync(client, id, "?waitSeconds=0", cancellationToken);
            }

            if (pause > TimeSpan.Zero)
            {
                await Task.Delay(pause, cancellationToken);
            }
        }
    }

    /// <summary>A job's fields, one a line.</summary>
    internal static void WriteJob(CliContext cli, JsonElement job)
    {
        var grid = new Grid().AddColumn().AddColumn();
        foreach (var (label, name) in new[]
        {
            ("Job", "jobId"), ("Kind", "kind"), ("Business key", "businessKey"), ("Status", "status"), ("Attempts", "attempts"),
            ("Last error", "lastError"), ("Progress", "progress"), ("Created", "createdAt"), ("Updated", "updatedAt"),
            ("Next attempt", "nextAttemptAt"), ("Finished", "finishedAt"),
        })
        {
            grid.AddRow(new Text(label, Output.Bold), Output.Cell(job, name, maxLength: 2000));
        }

        cli.Out.Write(grid);
    }

    /// <summary>
    /// With <c>--wait</c>, the exit code says how the wait ended, as <c>operation --wait</c> does, so that
    /// <c>conveyor job ID --wait 30 &amp;&amp; next-step</c> goes on only after the job succeeded.
    /// </summary>
    internal static int WaitOutcome(string? status) => status switch
    {
        "succeeded" => ExitCodes.Ok,
        "dead-lettered" or "cancelled" => ExitCodes.OperationFailed,
        _ => ExitCodes.StillRunning,
    };
}

public sealed class CancelSettings : ApiSettings
{
    [CommandArgument(0, "<job-id>")]
    [Description("The job's id (the jobId of a submission).")]
    public Guid Id { get; set; }
}

/// <summary>
/// <c>conveyor cancel &lt;job-id&gt;</c>: cancels a job that has not started (<c>DELETE /api/jobs/{id}</c>), queued or
/// scheduled, and shows it. The Api answers a cancel of a cancelled job as a cancel, so the request is sent again
/// whenever that may settle it, for up to two minutes: after a 429, 502, 503 or 504, as reads are, and after a 409 with
/// Retry-After, which says a worker or the scheduler held the job's row for a moment (most likely it was starting, and
/// the next try then finds it started). A job that has started, or has ended, is a conflict (4) with the Api's reason;
/// so is a row still held when the two minutes are over. An Api that cannot be reached is 5: running it again is safe.
/// </summary>
public sealed class CancelCommand : ConveyorCommand<CancelSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, CancelSettings settings, CancellationToken cancellationToken)
    {
        var answer = await client.SendIdempotentAsync(HttpMethod.Delete, $"api/jobs/{settings.Id}", $"cancel job {settings.Id}", HeldForAMoment, cancellationToken);
        // The Api answers a cancel only with the job it cancelled: another job (a proxy or cache that mixes up paths) is named,
        // as job, result and run-now name it.
        var job = Answers.ExpectAskedFor(Answers.ExpectObject(answer, "a job", "jobId", "status"), "job", "jobId", settings.Id);
        if (ConveyorClient.Text(job, "status") is not "cancelled")
        {
            throw Answers.Unexpected($"asked to cancel job {settings.Id}, it answered with the job not cancelled ({job.GetProperty("status").GetRawText()})");
        }

        if (settings.Json)
        {
            WriteJson(cli, job);
            return ExitCodes.Ok;
        }

        cli.Out.WriteLine($"Job {settings.Id} is cancelled: it will not run.");
        JobCommand.WriteJob(cli, job);
        return ExitCodes.Ok;
    }

    /// <summary>The Api's 409 for a job's row held by another transaction: it asks to come back, unlike the 409 for a job that has started.</summary>
    internal static bool HeldForAMoment(ConveyorClient.Answer answer) =>
        answer.Status == System.Net.HttpStatusCode.Conflict && answer.RetryAfter is not null && answer.IsProblem;
}

public sealed class RunNowSettings : ApiSettings
{
    public const string RetryScheduled = "retry-scheduled";
    public const string Scheduled = "scheduled";

    /// <summary>The Api's most jobs per request (<c>POST /api/jobs/run-now</c>).</summary>
    public const int MaxLimit = 10_000;

    /// <summary>The Api's jobs per request when no <c>--limit</c> is given.</summary>
    public const int DefaultLimit = 1000;

    [CommandArgument(0, "[job-id]")]
    [Description("The job's id (the jobId of a submission); or --kind for many jobs.")]
    public Guid? Id { get; set; }

    [CommandOption("--kind <KIND>")]
    [Description("Every job of this kind that waits in the store (charge-payment, deliver-webhook, generate-report), instead of one job.")]
    public string? Kind { get; set; }

    [CommandOption("--status <STATUS>")]
    [Description("With --kind: retry-scheduled (the default: delayed redeliveries) or scheduled (jobs before their runAt).")]
    public string? Status { get; set; }

    [CommandOption("--limit <N>")]
    [Description("With --kind: at most this many jobs, soonest due first (1 to 10000; the Api's default 1000).")]
    public int? Limit { get; set; }

    public override ValidationResult Validate()
    {
        if ((Id is null) == (Kind is null))
        {
            return ValidationResult.Error("Give a job id, or --kind for every job of a kind that waits (not both).");
        }

        if (Kind is null && (Status is not null || Limit is not null))
        {
            return ValidationResult.Error("--status and --limit go with --kind.");
        }

        if (Status is not (null or RetryScheduled or Scheduled))
        {
            return ValidationResult.Error($"--status must be {RetryScheduled} or {Scheduled}: only those wait in the store.");
        }

        return Limit is < 1 or > MaxLimit
            ? ValidationResult.Error($"--limit must be from 1 to {MaxLimit}.")
            : ValidationResult.Success();
    }
}

/// <summary>
/// <c>conveyor run-now &lt;job-id&gt;</c>: makes a job that waits in the store due now (<c>POST /api/jobs/{id}/run-now</c>):
/// one scheduled for later, or one whose delayed redelivery is still ahead (after the outage that failed it is over). A
/// worker runs it next, with the retry budget it had. Sent again as a cancel is, for up to two minutes: after a 429 (its
/// queue full), 502, 503 or 504, and after a 409 with Retry-After (its row held for a moment); the Api makes it due again
/// harmlessly. A job in any other status is a conflict (4) with the Api's reason.
/// <c>conveyor run-now --kind K [--status S] [--limit N]</c> does so for the jobs of a kind (<c>POST /api/jobs/run-now</c>)
/// and says how many still wait, for the next run.
/// </summary>
public sealed class RunNowCommand : ConveyorCommand<RunNowSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, RunNowSettings settings, CancellationToken cancellationToken)
    {
        if (settings.Kind is { } kind)
        {
            return await RunManyAsync(cli, client, settings, kind, cancellationToken);
        }

        var jobId = settings.Id!.Value;
        // A gateway's 502 or 504 may follow a try the Api acted on: the job made due now, and taken by a worker since.
        var mayHaveBeenTaken = false;
        JsonElement answer;
        try
        {
            answer = await client.SendIdempotentAsync(
                HttpMethod.Post, $"api/jobs/{jobId}/run-now", $"run job {jobId} now", CancelCommand.HeldForAMoment, cancellationToken,
                triedAgain: refused => mayHaveBeenTaken |= refused.Status is System.Net.HttpStatusCode.BadGateway or System.Net.HttpStatusCode.GatewayTimeout);
        }
        catch (CliFailureException failure) when (mayHaveBeenTaken && failure.ExitCode == ExitCodes.NotFoundOrConflict)
        {
            throw new CliFailureException(failure.ExitCode,
                $"{failure.Message}{Environment.NewLine}An earlier try may have made it due now: a gateway answered it 502 or 504, which the Api "
                + $"may have acted on, and a worker may have taken the job since. See: {cli.Command($"job {jobId}")}");
        }

        var job = Answers.ExpectAskedFor(Answers.ExpectObject(answer, "a job", "jobId", "status"), "job", "jobId", jobId);

        if (settings.Json)
        {
            WriteJson(cli, job);
            return ExitCodes.Ok;
        }

        cli.Out.WriteLine(Printable.Text($"Job {jobId} is due now: a worker runs it next. Follow it with: {cli.Command($"job {jobId} --wait 60")}"));
        JobCommand.WriteJob(cli, job);
        return ExitCodes.Ok;
    }

    private static async Task<int> RunManyAsync(CliContext cli, ConveyorClient client, RunNowSettings settings, string kind, CancellationToken cancellationToken)
    {
        var request = new System.Text.Json.Nodes.JsonObject { ["kind"] = kind };
        if (settings.Status is { } status)
        {
            request["status"] = status;
        }

        if (settings.Limit is { } limit)
        {
            request["limit"] = limit;
        }

        JsonElement answer;
        try
        {
            answer = await client.SendUnlessTakenAsync(HttpMethod.Post, "api/jobs/run-now", $"run {kind} jobs now", request.ToJsonString(), cancellationToken);
        }
        catch (CliFailureException failure) when (failure.RequestSent)
        {
            // Not sent again: each run the Api acts on makes up to the limit more jobs due now, and only the last count would be shown.
            throw new CliFailureException(failure.ExitCode,
                $"{failure.Message}{Environment.NewLine}The request was sent, but the Api's answer never came: it may have made up to "
                + $"{settings.Limit ?? RunNowSettings.DefaultLimit} {kind} job(s) due now. It was not sent again, which would release as many more. "
                + "Running it again is safe, and says how many still wait: "
                + cli.Command($"run-now {ShellWords.Option("--kind", kind)}"
                    + (settings.Status is null ? "" : $" --status {settings.Status}")
                    + (settings.Limit is { } given ? $" --limit {given.ToString(CultureInfo.InvariantCulture)}" : "")));
        }

        var summary = Answers.ExpectObject(answer, "a run-now summary", "released", "stillWaiting");
        if (settings.Json)
        {
            WriteJson(cli, summary);
            return ExitCodes.Ok;
        }

        if (!summary.GetProperty("released").TryGetInt32(out var released) || !summary.GetProperty("stillWaiting").TryGetInt32(out var waiting))
        {
            throw Answers.Unexpected("expected counts of jobs");
        }

        var which = settings.Status ?? RunNowSettings.RetryScheduled;
        cli.Out.WriteLine(Printable.Text(released == 0 && waiting == 0
            ? $"No {kind} job is {which} with its time ahead: none was made due now."
            : $"{released} {kind} job(s) {which} made due now: workers run them next."));
        if (waiting > 0)
        {
            cli.Out.WriteLine(Printable.Text($"{waiting} still wait for their time. Run it again to release them: "
                + cli.Command($"run-now {ShellWords.Option("--kind", kind)}" + (settings.Status is null ? "" : $" --status {which}"))));
        }

        return ExitCodes.Ok;
    }
}

/// <summary>
/// <c>conveyor jobs [--status S] [--kind K [--business-key KEY]] [--limit N] [--order newest|oldest] [--after CURSOR] [--follow [--interval S] [--retry-for S]]</c>:
/// a page of jobs, newest first or oldest first up to the Api's settle horizon, and how to get the next; with <c>--follow</c>
/// (oldest first without <c>--order</c>), the oldest-first feed polled until Ctrl+C.
/// </summary>
public sealed class JobsCommand : ConveyorCommand<JobsSettings>
{
    /// <summary>The longest pause between two tries of a refused read of <c>--follow</c> when the answer asks for none.</summary>
    private static readonly TimeSpan LongestFollowPause = TimeSpan.FromSeconds(30);

    /// <summary>The longest Retry-After <c>--follow</c> waits as asked; a longer one is cut to it (a read sooner than asked costs one refusal).</summary>
    private static readonly TimeSpan LongestFollowRetryAfter = TimeSpan.FromMinutes(5);

    /// <summary>How often <c>--follow</c> asks whether stdout was closed while it writes nothing.</summary>
    private static readonly TimeSpan OutputCheckInterval = TimeSpan.FromSeconds(1);

    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, JobsSettings settings, CancellationToken cancellationToken)
    {
        if (settings.Follow)
        {
            return await FollowAsync(cli, client, settings, cancellationToken);
        }

        var page = await ReadPageAsync(client, settings, settings.After, cancellationToken);
        if (settings.Json)
        {
            // The Api's page as it is: its nextCursor is what --after takes.
            WriteJson(cli, page);
            return ExitCodes.Ok;
        }

        var items = page.GetProperty("items");
        var howToGoOn = HowToGoOn(cli, settings, ConveyorClient.Text(page, "nextCursor"), full: items.GetArrayLength() >= PageSize(settings));
        var table = new Table().AddColumns("Job", "Kind", "Business key", "Status", "Attempts", "Last error", "Created", "Updated");
        foreach (var job in items.EnumerateArray())
        {
            table.AddRow(
                Output.Cell(job, "jobId"), Output.Cell(job, "kind"), Output.Cell(job, "businessKey"), Output.Cell(job, "status"),
                Output.Cell(job, "attempts"), Output.Cell(job, "lastError", maxLength: 80), Output.Cell(job, "createdAt"), Output.Cell(job, "updatedAt"));
        }

        cli.Out.Write(table);
        if (howToGoOn is not null)
        {
            cli.Err.WriteLine(Printable.Text(howToGoOn));
        }

        return ExitCodes.Ok;
    }

    /// <summary>
    /// Polls the oldest-first listing from <c>--after</c> (or the oldest job) with each page's nextCursor, which never passes
    /// a job that commits late (ADR 0013), so each job is printed once: a full page is followed at once, a short one after
    /// <c>--interval</c>. A read refused in a way that may pass is tried again until it passes (<see cref="ReadFollowedPageAsync"/>).
    /// Ends only with Ctrl+C (130) or a failure (its exit code), either saying how to resume from the last cursor whose jobs
    /// were printed.
    /// </summary>
    private static async Task<int> FollowAsync(CliContext cli, ConveyorClient client, JobsSettings settings, CancellationToken cancellationToken)
    {
        var interval = TimeSpan.FromSeconds(settings.Interval ?? JobsSettings.DefaultIntervalSeconds);
        var cursor = settings.After;
        var answered = false;
        if (settings.Status is not null)
        {
            // `--status dead-lettered --follow` reads like an alert on failed jobs; it is not one, which is said once.
            cli.Err.WriteLine(Printable.Text(
                $"Note: --status {settings.Status} is matched when a job is listed, as it settles (Jobs:ListingSettleSeconds after its submission); "
                + "a job that reaches that status later is not listed. To see every job, follow without --status; to catch every failed job, "
                + $"watch conveyor_jobs_dead_lettered_total or the _error queues ({cli.Command("queues")})."));
        }

        // Nothing may be written for hours (no new job, a long --interval), so a stdout whose reader has gone is looked for
        // meanwhile too, not only found by the next write: `conveyor jobs --follow | head -1` ends once head has the header.
        using var outputClosed = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var watching = WatchOutputAsync(cli, outputClosed);
        try
        {
            while (true)
            {
                var page = await ReadFollowedPageAsync(cli, client, settings, cursor, answered, outputClosed.Token);
                // The oldest-first listing always names where to go on; an Api that leaves it out does not know order=oldest.
                var next = ConveyorClient.Text(page, "nextCursor")
                    ?? throw Answers.Unexpected("expected a page of the oldest-first listing: a JSON object with items and a nextCursor");
                if (!answered && !settings.Json)
                {
                    // Once the Api has answered with a page: a line it refuses at once (a bad --after) leaves stdout empty.
                    cli.Out.WriteLine(FeedLine("Created", "Job", "Kind", "Status", "Attempts", "Business key", "Last error"));
                }

                answered = true;
                var items = page.GetProperty("items");
                if (settings.Json && items.GetArrayLength() > 0)
                {
                    // One line per page that has jobs: its jobs and the cursor to resume after them, together.
                    cli.RawOut.WriteLine(JsonSerializer.Serialize(page, ReadableJson.Compact));
                }
                else if (!settings.Json)
                {
                    foreach (var job in items.EnumerateArray())
                    {
                        cli.Out.WriteLine(FeedLine(
                            Output.Plain(job, "createdAt"), Output.Plain(job, "jobId"), Output.Plain(job, "kind"), Output.Plain(job, "status"),
                            Output.Plain(job, "attempts"), Output.Plain(job, "businessKey"), Output.Plain(job, "lastError", maxLength: 80)));
                    }
                }

                cursor = next;
                if (items.GetArrayLength() < PageSize(settings))
                {
                    await Task.Delay(interval, outputClosed.Token);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw new CliFailureException(ExitCodes.Interrupted,
                $"interrupted: stopped following the jobs.{Resume(cli, settings, cursor)}");
        }
        catch (Exception exception) when ((exception is OperationCanceledException or IOException) && cli.OutputClosed())
        {
            // The cursor is the one after the last page written whole: a page cut off by the closed pipe is listed again.
            throw new CliFailureException(ExitCodes.OutputClosed,
                $"standard output was closed (broken pipe): stopped following the jobs.{Resume(cli, settings, cursor)}");
        }
        catch (CliFailureException failure) when (cursor is not null && failure.ExitCode != ExitCodes.Usage)
        {
            throw new CliFailureException(failure.ExitCode, $"{failure.Message}{Environment.NewLine}{Resume(cli, settings, cursor).TrimStart()}");
        }
        finally
        {
            await outputClosed.CancelAsync();
            await watching;
        }
    }

    /// <summary>
    /// Asks once a second whether stdout was closed (<see cref="CliContext.OutputClosed"/>), and if so cancels
    /// <paramref name="closed"/>, which ends the feed's read or pause; ends when it is cancelled otherwise.
    /// </summary>
    private static async Task WatchOutputAsync(CliContext cli, CancellationTokenSource closed)
    {
        try
        {
            while (!cli.OutputClosed())
            {
                await Task.Delay(OutputCheckInterval, closed.Token);
            }

            await closed.CancelAsync();
        }
        catch (OperationCanceledException) when (closed.IsCancellationRequested)
        {
            // The feed ended first (Ctrl+C, or a failure that stopped it).
        }
    }

    /// <summary>A page, read as every read is (<see cref="ConveyorClient.GetAsync"/>); a 400 names the options, such as <c>--after</c> for the cursor.</summary>
    private static async Task<JsonElement> ReadPageAsync(ConveyorClient client, JobsSettings settings, string? cursor, CancellationToken cancellationToken) =>
        ExpectPage(await client.GetAsync(PagePath(settings, cursor), cancellationToken, JobsSettings.Options.For));

    /// <summary>
    /// A page of jobs as the Api gives it, checked before anything of it is printed: its items and its nextCursor, which must be
    /// one that <c>--after</c> takes (<see cref="JobsSettings.IsCursor"/>): the next-page and resume hints print it as the
    /// command to go on with, and a cursor the CLI itself refuses would make that command end with 2.
    /// </summary>
    private static JsonElement ExpectPage(JsonElement answer)
    {
        var page = Answers.ExpectCursor(Answers.ExpectObjectWithList(answer, "a page of jobs", "items"), "a page of jobs", "nextCursor");
        return ConveyorClient.Text(page, "nextCursor") is { } next && !JobsSettings.IsCursor(next)
            ? throw Answers.Unexpected("expected a page of jobs: its nextCursor a cursor of letters, digits, '-' and '_'")
            : page;
    }

    /// <summary>
    /// A page of <c>--follow</c>. A follower runs for hours, as <c>tail -F</c> does, and outlives an outage: a read answered
    /// 429, 502, 503 or 504 (a rate limit, a gateway that cannot reach the Api, the Api that cannot reach its database), or
    /// left unanswered once the Api has answered a first page (a restart; at first, an address that may be wrong ends with 5
    /// at once), is tried again after the answer's Retry-After (at most <see cref="LongestFollowRetryAfter"/>), or after a
    /// pause that doubles up to <see cref="LongestFollowPause"/>, until it passes, or for <c>--retry-for</c> if given (then
    /// 5). One line on stderr says when reads start being refused, or are refused otherwise, and one when they pass again,
    /// not a line per try. Errors that do not pass by waiting end it at once: a key refused (401, 403, a lockout: 3), the
    /// request refused (400: 2), 404 (4), a 500 (1), an answer the Api does not give (6).
    /// </summary>
    private static async Task<JsonElement> ReadFollowedPageAsync(
        CliContext cli, ConveyorClient client, JobsSettings settings, string? cursor, bool answeredBefore, CancellationToken cancellationToken)
    {
        var retryFor = settings.RetryFor is { } seconds ? TimeSpan.FromSeconds(seconds) : (TimeSpan?)null;
        string? refusal = null;
        long refusedSince = 0;
        var page = await new ReadRetry
        {
            DescribeField = JobsSettings.Options.For,
            MayPass = answer => answer is not null || answeredBefore,
            Waits = new RetryBudget
            {
                Budget = retryFor ?? TimeSpan.MaxValue,
                ShortestPause = cli.PollInterval,
                LongestPause = LongestFollowPause,
                LongestRetryAfter = LongestFollowRetryAfter,
            },
            Retrying = (failure, wait) =>
            {
                var said = failure.Message.Split(Environment.NewLine)[0];
                if (refusal is null)
                {
                    refusedSince = Stopwatch.GetTimestamp();
                }

                if (said != refusal)
                {
                    cli.Err.WriteLine(Printable.Text(
                        $"Could not read the jobs ({said}); trying again in {wait.TotalSeconds:0.#} s, and on after each failure (as the Api asks, else after a growing pause) "
                        + (retryFor is { } limit ? $"for up to {limit.TotalSeconds:0} s (--retry-for)." : "until they pass (Ctrl+C stops).")));
                }

                refusal = said;
            },
            GiveUp = (failure, wait, tried) => new CliFailureException(failure.ExitCode,
                $"{failure.Message}{Environment.NewLine}Could not read the jobs for {tried.TotalSeconds:0} s (--retry-for {settings.RetryFor}; "
                + $"the next try would be in {wait.TotalSeconds:0.#} s): stopped following."),
        }.ReadAsync(token => client.GetAnswerAsync(PagePath(settings, cursor), token), cancellationToken);
        if (refusal is not null)
        {
            cli.Err.WriteLine($"Read the jobs again after {Stopwatch.GetElapsedTime(refusedSince).TotalSeconds:0} s of failed reads; following on.");
        }

        return ExpectPage(page);
    }

    private static string PagePath(JobsSettings settings, string? cursor) =>
        "api/jobs" + OperationsCommand.Query(
            ("status", settings.Status), ("kind", settings.Kind), ("businessKey", settings.BusinessKey),
            ("limit", settings.Limit?.ToString(CultureInfo.InvariantCulture)), ("order", settings.OrderQuery), ("cursor", cursor));

    private static int PageSize(JobsSettings settings) => settings.Limit ?? JobsSettings.DefaultPageSize;

    /// <summary>
    /// After a page: the command for the next one, said on stderr so that the table stays alone on stdout. Newest first, a
    /// cursor comes only when more jobs follow. Oldest first it always comes: after a full page more may follow; after a
    /// short one it marks the settle horizon, from which jobs that settle later are listed.
    /// </summary>
    private static string? HowToGoOn(CliContext cli, JobsSettings settings, string? cursor, bool full)
    {
        if (cursor is null)
        {
            return null;
        }

        var next = Command(cli, settings, cursor, follow: false);
        return !settings.OldestFirstOrder ? $"More jobs follow. Next page: {next}"
            : full ? $"More jobs may follow. Next page: {next}"
            : $"No more settled jobs for now. Newer ones, once settled: {next} (or keep polling with --follow)";
    }

    /// <summary>" Resume with: conveyor jobs ... --follow --after CURSOR", or nothing before a first cursor.</summary>
    private static string Resume(CliContext cli, JobsSettings settings, string? cursor) =>
        cursor is null ? "" : $" Resume with: {Printable.Text(Command(cli, settings, cursor, follow: true))}";

    /// <summary>This command's line again, with <paramref name="cursor"/> as --after, each value quoted for a shell where it needs it.</summary>
    private static string Command(CliContext cli, JobsSettings settings, string cursor, bool follow)
    {
        var words = new List<string> { "jobs" };
        void Add(string option, string? value)
        {
            if (value is not null)
            {
                words.Add(ShellWords.Option(option, value));
            }
        }

        Add("--status", settings.Status);
        Add("--kind", settings.Kind);
        Add("--business-key", settings.BusinessKey);
        Add("--limit", settings.Limit?.ToString(CultureInfo.InvariantCulture));
        // Following, oldest first goes without saying: named only when the line named it.
        Add("--order", settings.OldestFirstOrder && (settings.Order is not null || !follow) ? JobsSettings.OldestFirst : null);
        if (follow)
        {
            words.Add("--follow");
            Add("--interval", settings.Interval?.ToString(CultureInfo.InvariantCulture));
            Add("--retry-for", settings.RetryFor?.ToString(CultureInfo.InvariantCulture));
        }

        if (settings.Json)
        {
            words.Add("--json");
        }

        Add("--after", cursor);
        return cli.Command(string.Join(' ', words));
    }

    /// <summary>One job of <c>--follow</c> as a line of columns, as it comes: a table is drawn only once it is complete.</summary>
    private static string FeedLine(string created, string job, string kind, string status, string attempts, string businessKey, string lastError) =>
        string.Join("  ", created.PadRight(32), job.PadRight(36), kind.PadRight(15), status.PadRight(15), attempts.PadRight(8), businessKey.PadRight(36), lastError)
            .TrimEnd();
}
