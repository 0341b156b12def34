namespace Conveyor.Storage.Reports;

/// <summary>The result of a GenerateReport job: ledger totals per currency.</summary>
public sealed class Report
{
    public Guid ReportId { get; set; }

    public string? AccountId { get; set; }

    public string? Currency { get; set; }

    public long RowsScanned { get; set; }

    /// <summary>
    /// JSON: <c>[{ "currency", "count", "totalMinor" }]</c>, both numbers integers. <c>totalMinor</c> can
    /// exceed a 64-bit integer (a sum of many charges): read it as a decimal, not a long.
    /// </summary>
    public required string Totals { get; set; }

    public DateTimeOffset CompletedAt { get; set; }
}
