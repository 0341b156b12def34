using Conveyor.Storage.Jobs;
using System.Text.Json.Serialization;

namespace Conveyor.Api.Jobs;

/// <summary>Body of the 202 answer to a submission.</summary>
public sealed record JobAccepted(Guid JobId, string Kind, string Status);

/// <summary>Body of <c>GET /api/jobs/{jobId}</c>, and an item of a listing.</summary>
/// <param name="NextAttemptAt">When a scheduled job is due, or a retry-scheduled job's next attempt.</param>
/// <param name="BusinessKey">The command's business idempotency key (a charge's paymentId, a webhook's webhookId, a report's reportId).</param>
public sealed record JobDetails(
    Guid JobId,
    string Kind,
    string Status,
    int Attempts,
    string? LastError,
    int? Progress,
    DateTimeOffset CreatedAt,
    DateTimeOffset UpdatedAt,
    DateTimeOffset? NextAttemptAt = null,
    DateTimeOffset? FinishedAt = null,
    string? BusinessKey = null)
{
    internal static JobDetails From(Job job) => new(
        job.Id, job.Kind, job.Status, job.Attempts, job.LastError, job.Progress, job.CreatedAt, job.UpdatedAt,
        job.NextAttemptAt, job.FinishedAt, job.BusinessKey);
}

/// <summary>Body of <c>GET /api/jobs</c>: newest first; <see cref="NextCursor"/> is null on the last page.</summary>
public sealed record JobPage(IReadOnlyList<JobDetails> Items, string? NextCursor);

/// <summary>Body of the 202 answer to a batch: every job accepted, in the order sent.</summary>
public sealed record JobBatchAccepted(IReadOnlyList<JobBatchResult> Jobs);

/// <summary>
/// One job of a batch's answer, at <paramref name="Index"/> in the batch: accepted (its id, kind and
/// status, as <see cref="JobAccepted"/>) or not (<paramref name="Error"/>, what
/// <c>POST /api/jobs/{kind}</c> would have answered for it alone).
/// </summary>
public sealed record JobBatchResult(
    int Index,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Guid? JobId = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Kind = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Status = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] JobBatchError? Error = null);

/// <summary>Why one job of a batch was not accepted: the status, title and detail of its problem.</summary>
public sealed record JobBatchError(int Status, string Title, string Detail);

/// <summary>Body of <c>POST /api/jobs/run-now</c>: how many jobs of the kind and status were made due now.</summary>
/// <param name="Released">Jobs whose stored command is due now; a dispatcher publishes them within moments.</param>
/// <param name="StillWaiting">
/// Jobs of the kind and status whose command still waits for its time: past the request's limit, or held by another
/// transaction at that moment. Send the request again until it is 0.
/// </param>
public sealed record JobsRunNow(string Kind, string Status, int Released, int StillWaiting);
