using System.ComponentModel.DataAnnotations;
using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Jobs;

/// <summary>Settings of <see cref="StrandedJobsMonitor"/> (section <c>Jobs</c>).</summary>
public sealed class StrandedJobsOptions
{
    public const string SectionName = "Jobs";

    /// <summary>
    /// A job still <c>queued</c> this long after its last update while its queue holds no message,
    /// or this long before a job of its kind that has already succeeded was submitted, is stranded.
    /// Its lower bound is <see cref="StrandedJobsOptionsValidator"/>'s: longer than a submission can take.
    /// </summary>
    [Range(1, 86_400)]
    public int StrandedAfterSeconds { get; set; } = 600;

    /// <summary>How often the Api looks for stranded jobs.</summary>
    [Range(1, 3600)]
    public int StrandedCheckSeconds { get; set; } = 60;
}

/// <summary>
/// Refuses a threshold within the time a submission can take (its publish budget, then the
/// removal of an unconfirmed row): the Api would publish again a job whose own request may still
/// be publishing it, or be about to remove its row and answer 503.
/// </summary>
internal sealed class StrandedJobsOptionsValidator(IOptions<RabbitMqOptions> rabbitMq) : IValidateOptions<StrandedJobsOptions>
{
    public ValidateOptionsResult Validate(string? name, StrandedJobsOptions options)
    {
        var submission = TimeSpan.FromSeconds(rabbitMq.Value.ConnectTimeoutSeconds) + JobSubmitter.CleanupTimeout;
        return TimeSpan.FromSeconds(options.StrandedAfterSeconds) > submission
            ? ValidateOptionsResult.Success
            : ValidateOptionsResult.Fail(
                $"Jobs:StrandedAfterSeconds ({options.StrandedAfterSeconds}) must be longer than a submission can take: " +
                $"RabbitMq:ConnectTimeoutSeconds ({rabbitMq.Value.ConnectTimeoutSeconds}) plus {JobSubmitter.CleanupTimeout.TotalSeconds:0} s to remove an unconfirmed row.");
    }
}
