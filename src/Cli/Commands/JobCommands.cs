using System.ComponentModel;
using System.Globalization;
using Spectre.Console;
using Spectre.Console.Cli;

namespace Conveyor.Cli.Commands;

public sealed class JobSettings : ApiSettings
{
    [CommandArgument(0, "<job-id>")]
    [Description("The job's id (the jobId of a submission).")]
    public Guid Id { get; set; }

    [CommandOption("--wait <SECONDS>")]
    [Description("Wait up to this many seconds (at most 30) for the job to end (succeeded, dead-lettered or cancelled).")]
    public int? Wait { get; set; }

    public override ValidationResult Validate() =>
        Wait is < 0 or > 30 ? ValidationResult.Error("--wait must be from 0 to 30 seconds.") : ValidationResult.Success();
}

public sealed class JobsSettings : ApiSettings
{
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
    [Description("At most this many, newest first (default 50, at most 500).")]
    public int? Limit { get; set; }

    public override ValidationResult Validate() =>
        BusinessKey is not null && Kind is null ? ValidationResult.Error("--business-key needs --kind.")
        : Limit is < 1 ? ValidationResult.Error("--limit must be at least 1.")
        : ValidationResult.Success();
}

/// <summary><c>conveyor job &lt;id&gt; [--wait N]</c>: one job's status, attempts and last error.</summary>
public sealed class JobCommand : ConveyorCommand<JobSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, JobSettings settings, CancellationToken cancellationToken)
    {
        var wait = settings.Wait is { } seconds ? $"?waitSeconds={seconds.ToString(CultureInfo.InvariantCulture)}" : "";
        var job = Answers.ExpectObject(await client.GetAsync($"api/jobs/{settings.Id}{wait}", cancellationToken), "a job", "jobId", "status");
        var exitCode = settings.Wait is null ? ExitCodes.Ok : WaitOutcome(ConveyorClient.Text(job, "status"));
        if (settings.Json)
        {
            WriteJson(cli, job);
            return exitCode;
        }

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
        if (ConveyorClient.Text(job, "status") == "dead-lettered" && ConveyorClient.Text(job, "kind") is { } kind)
        {
            cli.Out.WriteLine(Printable.Text($"Its command is in {kind}_error. Move it back with: conveyor move {ShellWords.Quote($"{kind}_error")} --job-id {settings.Id}"));
        }

        return exitCode;
    }

    /// <summary>
    /// With <c>--wait</c>, the exit code says how the wait ended, as <c>operation --wait</c> does, so that
    /// <c>conveyor job ID --wait 30 &amp;&amp; next-step</c> goes on only after the job succeeded.
    /// </summary>
    private static int WaitOutcome(string? status) => status switch
    {
        "succeeded" => ExitCodes.Ok,
        "dead-lettered" or "cancelled" => ExitCodes.OperationFailed,
        _ => ExitCodes.StillRunning,
    };
}

/// <summary><c>conveyor jobs [--status S] [--kind K [--business-key KEY]] [--limit N]</c>: jobs, newest first.</summary>
public sealed class JobsCommand : ConveyorCommand<JobsSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, JobsSettings settings, CancellationToken cancellationToken)
    {
        var query = OperationsCommand.Query(
            ("status", settings.Status), ("kind", settings.Kind), ("businessKey", settings.BusinessKey),
            ("limit", settings.Limit?.ToString(CultureInfo.InvariantCulture)));
        var page = Answers.ExpectObject(await client.GetAsync("api/jobs" + query, cancellationToken), "a page of jobs", "items");
        if (settings.Json)
        {
            WriteJson(cli, page);
            return ExitCodes.Ok;
        }

        var table = new Table().AddColumns("Job", "Kind", "Business key", "Status", "Attempts", "Last error", "Created", "Updated");
        foreach (var job in page.GetProperty("items").EnumerateArray())
        {
            table.AddRow(
                Output.Cell(job, "jobId"), Output.Cell(job, "kind"), Output.Cell(job, "businessKey"), Output.Cell(job, "status"),
                Output.Cell(job, "attempts"), Output.Cell(job, "lastError", maxLength: 80), Output.Cell(job, "createdAt"), Output.Cell(job, "updatedAt"));
        }

        cli.Out.Write(table);
        if (ConveyorClient.Text(page, "nextCursor") is not null)
        {
            cli.Out.MarkupLine("[grey]More jobs follow; raise --limit or narrow the filters.[/]");
        }

        return ExitCodes.Ok;
    }
}
