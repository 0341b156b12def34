using Conveyor.Contracts;
using Conveyor.Contracts.Reports;

namespace Conveyor.Api.Jobs;

/// <summary>Body of <c>POST /api/jobs/generate-report</c>: <c>{ reportId, accountId?, currency?, pageSize? }</c>.</summary>
internal static class GenerateReportRequest
{
    /// <summary>The business id: the job's unique key within its kind.</summary>
    public const string BusinessIdField = "reportId";

    public static JobRequest? Read(JsonFields fields)
    {
        var reportId = fields.RequiredId(BusinessIdField);
        var accountId = fields.OptionalString("accountId", FieldRules.AccountId);
        var currency = fields.OptionalString("currency", FieldRules.Currency);
        var pageSize = fields.OptionalInt32("pageSize", min: 1, max: ContractRules.MaxPageSize);

        return fields.HasErrors
            ? null
            : JobRequest.For(JobKinds.GenerateReport, reportId, new GenerateReport
            {
                ReportId = reportId,
                AccountId = accountId,
                Currency = currency,
                PageSize = pageSize,
            });
    }
}
