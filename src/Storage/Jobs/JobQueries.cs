namespace Conveyor.Storage.Jobs;

public static class JobQueries
{
    /// <summary>
    /// The jobs with every column but <see cref="Job.RequestBody"/> (up to the Api's 256 KiB body
    /// limit per queued job), for reads that show or compare jobs and never republish them.
    /// </summary>
    public static IQueryable<Job> WithoutRequestBody(this IQueryable<Job> jobs) =>
        jobs.Select(j => new Job
        {
            Id = j.Id,
            Kind = j.Kind,
            BusinessKey = j.BusinessKey,
            Status = j.Status,
            Attempts = j.Attempts,
            LastError = j.LastError,
            Progress = j.Progress,
            IdempotencyKey = j.IdempotencyKey,
            RequestHash = j.RequestHash,
            CreatedAt = j.CreatedAt,
            UpdatedAt = j.UpdatedAt,
            FinishedAt = j.FinishedAt,
            NextAttemptAt = j.NextAttemptAt,
        });
}
