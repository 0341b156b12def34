using Microsoft.EntityFrameworkCore;

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
            PayloadHash = j.PayloadHash,
            OriginalPayloadHash = j.OriginalPayloadHash,
            CreatedAt = j.CreatedAt,
            UpdatedAt = j.UpdatedAt,
            FinishedAt = j.FinishedAt,
            NextAttemptAt = j.NextAttemptAt,
        });

    /// <summary>How many ids one statement of <see cref="StatusesByIdAsync"/> probes.</summary>
    private const int IdsPerStatement = 1000;

    /// <summary>
    /// The current status of each of <paramref name="ids"/> that has a row (an id whose row is gone,
    /// swept by retention, is left out). One primary-key probe per id, a <c>LATERAL … LIMIT 1</c> the
    /// planner cannot turn into a join or an array scan that reads the table, whatever its statistics
    /// (ADR 0010); a thousand ids a statement.
    /// </summary>
    public static async Task<Dictionary<Guid, string>> StatusesByIdAsync(
        this ConveyorDbContext db, IReadOnlyCollection<Guid> ids, CancellationToken cancellationToken)
    {
        var statuses = new Dictionary<Guid, string>(ids.Count);
        foreach (var chunk in ids.Chunk(IdsPerStatement))
        {
            var rows = await db.Database.SqlQuery<IdAndStatus>($"""
                SELECT j.id, j.status
                  FROM unnest({chunk}::uuid[]) AS t(id)
                 CROSS JOIN LATERAL (SELECT o.id, o.status FROM jobs o WHERE o.id = t.id LIMIT 1) j
                """).ToListAsync(cancellationToken);
            foreach (var row in rows)
            {
                statuses[row.Id] = row.Status;
            }
        }

        return statuses;
    }

    private sealed record IdAndStatus(Guid Id, string Status);
}
