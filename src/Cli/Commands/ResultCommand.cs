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
            if (status != "succeeded")
            {
                var ended = status is "dead-lettered" or "cancelled";
                throw new CliFailureException(ended ? ExitCodes.OperationFailed : ExitCodes.StillRunning, Printable.Text(ended
                    ? $"Job {settings.Id} is {status}: only a succeeded job has a result. See why with: conveyor job {settings.Id}"
                    : $"Job {settings.Id} is still {status} after {seconds} s: it has no result yet."));
            }
        }

        var result = Answers.ExpectObject(await client.GetAsync($"api/jobs/{settings.Id}/result", cancellationToken), "a job's result", "jobId", "kind");
        if (ConveyorClient.Text(result, "jobId") is not { } id || !Guid.TryParse(id, out var shown) || shown != settings.Id)
        {
            throw Answers.Unexpected($"expected the result of job {settings.Id}");
        }

        if (settings.Json)
        {
            WriteJson(cli, result);
            return ExitCodes.Ok;
        }

        WriteFields(cli, result, [("Job", "jobId"), ("Kind", "kind"), ("Business key", "businessKey"), ("Finished", "finishedAt")]);
        if (Member(result, "charge") is { } charge)
        {
            WriteFields(cli, charge, [
                ("Payment", "paymentId"), ("Account", "accountId"), ("Amount (minor units)", "amountMinor"), ("Currency", "currency"),
                ("Gateway charge", "gatewayChargeId"), ("Charged", "chargedAt")]);
        }
        else if (Member(result, "webhook") is { } webhook)
        {
            WriteFields(cli, webhook, [
                ("Webhook", "webhookId"), ("Event type", "eventType"), ("Receiver", "receiverOrigin"), ("Answered", "statusCode"),
                ("Delivered", "deliveredAt")]);
        }
        else if (Member(result, "report") is { } report)
        {
            WriteReport(cli, report);
        }
        else
        {
            throw Answers.Unexpected("expected a charge, webhook or report in the result");
        }

        return ExitCodes.Ok;
    }

    private static JsonElement? Member(JsonElement json, string name) =>
        json.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Object ? value : null;

    private static void WriteFields(CliContext cli, JsonElement json, (string Label, string Name)[] fields)
    {
        var grid = new Grid().AddColumn().AddColumn();
        foreach (var (label, name) in fields)
        {
            grid.AddRow(new Text(label, Output.Bold), Output.Cell(json, name));
        }

        cli.Out.Write(grid);
    }

    /// <summary>The report's filters and a table of its totals, a currency a row; a total is shown as the Api wrote it, however large.</summary>
    private static void WriteReport(CliContext cli, JsonElement report)
    {
        var grid = new Grid().AddColumn().AddColumn();
        foreach (var (label, name, none) in new[]
        {
            ("Report", "reportId", ""), ("Account", "accountId", "all"), ("Currency", "currency", "all"), ("Rows scanned", "rowsScanned", ""),
            ("Completed", "completedAt", ""),
        })
        {
            var text = Output.Plain(report, name);
            grid.AddRow(new Text(label, Output.Bold), new Text(text.Length == 0 ? none : text));
        }

        cli.Out.Write(grid);
        if (!report.TryGetProperty("totals", out var totals) || totals.ValueKind != JsonValueKind.Array
            || totals.EnumerateArray().Any(total => total.ValueKind != JsonValueKind.Object))
        {
            throw Answers.Unexpected("expected the report's totals: a JSON array of objects");
        }

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
