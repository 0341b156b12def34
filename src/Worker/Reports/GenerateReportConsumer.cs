using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Contracts.Reports;
using Conveyor.Storage;
using Conveyor.Storage.Reports;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Jobs;
using MassTransit;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Reports;

/// <summary>
/// Aggregates the ledger page by page, as it was when the report started, reporting progress on the job
/// as it goes. A long job: it runs under the lease inbox, which holds no transaction while it works and
/// commits the totals at the end; the pages share one read-only snapshot
/// (<see cref="LedgerAggregator.BeginSnapshotAsync"/>), ended before that final transaction.
/// </summary>
public sealed class GenerateReportConsumer(
    ConveyorDbContext db,
    JobTracker tracker,
    IOptions<ReportOptions> options,
    TimeProvider time) : IConsumer<GenerateReport>
{
    public async Task Consume(ConsumeContext<GenerateReport> context)
    {
        var report = context.Message;
        var cancellationToken = context.CancellationToken;
        PermanentFailureException.ThrowIfInvalid(context, report.Validate());

        // Progress of this attempt only: a run that lost its lease stops reporting over the run that took it.
        var job = new JobRef(JobKinds.GenerateReport, report.ReportId.ToString(), null, ClaimedAttempt.Of(context));
        var pageSize = report.PageSize ?? options.Value.DefaultPageSize;
        var aggregator = new LedgerAggregator(db);
        // Ended here, on every way out: the lease inbox opens its final transaction on this same context.
        await using (await aggregator.BeginSnapshotAsync(cancellationToken))
        {
            var total = await aggregator.CountAsync(report.AccountId, report.Currency, cancellationToken);
            await tracker.ReportProgressAsync(job, 0, cancellationToken);

            while (await aggregator.NextPageAsync(report.AccountId, report.Currency, pageSize, cancellationToken))
            {
                var percent = total == 0 ? 99 : (int)Math.Min(99, aggregator.RowsScanned * 100 / total);
                await tracker.ReportProgressAsync(job, percent, cancellationToken);
                if (options.Value.PageDelayMilliseconds > 0)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(options.Value.PageDelayMilliseconds), time, cancellationToken);
                }
            }
        }

        db.Reports.Add(new Report
        {
            ReportId = report.ReportId,
            AccountId = report.AccountId,
            Currency = report.Currency,
            RowsScanned = aggregator.RowsScanned,
            Totals = JsonSerializer.Serialize(aggregator.Totals, JsonSerializerOptions.Web),
            CompletedAt = time.GetUtcNow(),
        });
        // Not saved here: the lease inbox saves it with the job's success in one final transaction.
    }
}
