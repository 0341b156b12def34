using System.Text.Json;
using Spectre.Console;

namespace Conveyor.Cli.Commands;

/// <summary>
/// <c>conveyor result &lt;job-id&gt; [--wait SECONDS]</c>: what a succeeded job did (<c>GET /api/jobs/{id}/result</c>): a
/// charge's gateway charge id, a webhook's answer, a report's totals. A job that has not succeeded is the Api's 409 (4).
/// With <c>--wait</c> it first waits for the job to end, as <c>conveyor job --wait</c> does, and then ends as that wait
/// did when the job did not succeed: 1 dead-lettered or cancelled, 7 not ended yet, with nothing on stdout, so
/// <c>conveyor result ID --wait 600 --json &gt; report.json</c> writes a file only for a result.
/// </summary>
public sealed class ResultCommand : ConveyorCommand<JobSettings>
{
    protected override async Task<int> RunAsync(CliContext cli, ConveyorClient client, JobSettings settings, CancellationToken cancellationToken)
    {
        if (settings.Wait is { } seconds)
        {
            var job = await JobCommand.WaitAsync(client, settings.Id, TimeSpan.FromSeconds(seconds), cancellationToken);
            var status = ConveyorClient.Text(job, "status");
            var outcome = JobCommand.WaitOutcome(status);
            if (outcome != ExitCodes.Ok)
            {
                throw new CliFailureException(outcome, Printable.Text(outcome == ExitCodes.OperationFailed
                    ? $"Job {settings.Id} is {status}: only a succeeded job has a result. See why with: {cli.Command($"job {settings.Id}")}"
                    : $"Job {settings.Id} is still {status} after {seconds} s: it has no result yet."));
            }
        }

        var result = Answers.ExpectAskedFor(
            Answers.ExpectObject(await client.GetAsync($"api/jobs/{settings.Id}/result", cancellationToken), "a job's result", "jobId", "kind"), "job", "jobId", settings.Id);

        if (settings.Json)
        {
            WriteJson(cli, result);
            return ExitCodes.Ok;
        }

        // One grid: the job's fields, then those of what it did, lined up in one column.
        var grid = new Grid().AddColumn().AddColumn();
        AddRows(grid, result, [("Job", "jobId", ""), ("Kind", "kind", ""), ("Business key", "businessKey", ""), ("Finished", "finishedAt", "")]);
        JsonElement? totals = null;
        if (Member(result, "charge") is { } charge)
        {
            AddRows(grid, charge, [
                ("Payment", "paymentId", ""), ("Account", "accountId", ""), ("Amount (minor units)", "amountMinor", ""), ("Currency", "currency", ""),
                ("Gateway charge", "gatewayChargeId", ""), ("Charged", "chargedAt", "")]);
        }
        else if (Member(result, "webhook") is { } webhook)
        {
            AddRows(grid, webhook, [
                ("Webhook", "webhookId", ""), ("Event type", "eventType", ""), ("Receiver", "receiverOrigin", ""), ("Answered", "statusCode", ""),
                ("Delivered", "deliveredAt", "")]);
        }
        else if (Member(result, "report") is { } report)
        {
            // A filter the report did not have is null: it covers all.
            AddRows(grid, report, [
                ("Report", "reportId", ""), ("Account", "accountId", "all"), ("Currency", "currency", "all"), ("Rows scanned", "rowsScanned", ""),
                ("Completed", "completedAt", "")]);
            totals = report.TryGetProperty("totals", out var items) && items.ValueKind == JsonValueKind.Array
                && items.EnumerateArray().All(total => total.ValueKind == JsonValueKind.Object)
                    ? items
                    : throw Answers.Unexpected("expected the report's totals: a JSON array of objects");
        }
        else
        {
            throw Answers.Unexpected("expected a charge, webhook or report in the result");
        }

        cli.Out.Write(grid);
        if (totals is { } rows)
        {
            WriteTotals(cli, rows);
        }

        return ExitCodes.Ok;
    }

    private static JsonElement? Member(JsonElement json, string name) =>
        json.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Object ? value : null;

    private static void AddRows(Grid grid, JsonElement json, (string Label, string Name, string Missing)[] fields)
    {
        foreach (var (label, name, missing) in fields)
        {
            var text = Output.Plain(json, name);
            grid.AddRow(new Text(label, Output.Bold), new Text(text.Length == 0 ? missing : text));
        }
    }

    /// <summary>The report's totals, a currency a row; a total is shown as the Api wrote it, however large.</summary>
    private static void WriteTotals(CliContext cli, JsonElement totals)
    {
        if (totals.GetArrayLength() == 0)
        {
            cli.Out.WriteLine("No charges matched.");
            return;
        }

        var table = new Table().AddColumns("Currency", "Charges", "Total (minor units)");
        table.Columns[1].RightAligned();
        table.Columns[2].RightAligned();
        foreach (var total in totals.EnumerateArray())
        {
            table.AddRow(Output.Cell(total, "currency"), Output.Cell(total, "count"), Output.Cell(total, "totalMinor"));
        }

        cli.Out.Write(table);
    }
}
