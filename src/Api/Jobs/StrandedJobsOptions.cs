using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.Jobs;

/// <summary>Settings of <see cref="StrandedJobsMonitor"/> (section <c>Jobs</c>).</summary>
public sealed class StrandedJobsOptions
{
    public const string SectionName = "Jobs";

    /// <summary>A job still <c>queued</c> this long after its last update, while its queue holds no message, counts as stranded.</summary>
    [Range(60, 86_400)]
    public int StrandedAfterSeconds { get; set; } = 600;

    /// <summary>How often the Api looks for stranded jobs.</summary>
    [Range(1, 3600)]
    public int StrandedCheckSeconds { get; set; } = 60;
}
