using Conveyor.Storage.Jobs;

namespace Conveyor.Api.Jobs;

/// <summary>Body of the 202 answer to a submission.</summary>
public sealed record JobAccepted(Guid JobId, string Kind, string Status);

/// <summary>Body of <c>GET /api/jobs/{jobId}</c>.</summary>
public sealed record JobDetails(
    Guid JobId,
    string Kind,
    string Status,
    int Attempts,
    string? LastError,
    int? Progress,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt)
{
    internal static JobDetails From(Job job) => new(
        job.Id, job.Kind, job.Status, job.Attempts, job.LastError, job.Progress, job.CreatedAt, job.UpdatedAt);
}
