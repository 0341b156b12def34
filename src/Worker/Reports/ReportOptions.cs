using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Reports;

/// <summary>Section <c>Reports</c>.</summary>
public sealed class ReportOptions
{
    public const string SectionName = "Reports";

    [Range(1, 10_000)]
    public int DefaultPageSize { get; set; } = 1_000;

    /// <summary>A pause after each page, to throttle the load a report puts on the database.</summary>
    [Range(0, 60_000)]
    public int PageDelayMilliseconds { get; set; }
}
