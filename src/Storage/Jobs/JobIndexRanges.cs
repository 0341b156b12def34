namespace Conveyor.Storage.Jobs;

/// <summary>
/// SQL for reads by time over <c>jobs</c> through its <c>(kind, status, created_at, id)</c> index
/// (ADR 0010): one index range per kind and status, each in time order, so what a read costs follows
/// what it returns rather than the table's size or the planner's statistics.
/// </summary>
public static class JobIndexRanges
{
    /// <summary>
    /// Every status, as a SQL list. The index holds only rows whose status is in it (every row), so
    /// that a lookup by kind and business key, which never names a status, cannot take this index
    /// for the unique one: under statistics that know nothing of a kind, the planner rated both
    /// alike and read every job of the kind per lookup. Each query meant to use the index repeats
    /// <c>status IN</c> this list, as a literal, so that even a generic plan may use it.
    /// </summary>
    public const string Statuses = "('" + JobStatus.Scheduled + "', '" + JobStatus.Queued + "', '" + JobStatus.Running + "', '"
        + JobStatus.RetryScheduled + "', '" + JobStatus.Succeeded + "', '" + JobStatus.DeadLettered + "', '" + JobStatus.Cancelled + "')";

    /// <summary>
    /// A recursive CTE, <c>job_pairs(kind, status)</c>: every (kind, status) pair present in
    /// <c>jobs</c>, one index probe per pair (a loose index scan: the next pair after the last one
    /// found). Taken from the table rather than from this version's kinds, so rows of a kind no
    /// longer deployed are still listed and swept. Put it after <c>WITH RECURSIVE</c>.
    /// </summary>
    public const string KindStatusPairs = $"""
        job_pairs (kind, status) AS (
            (SELECT kind, status FROM jobs WHERE status IN {Statuses} ORDER BY kind, status LIMIT 1)
            UNION ALL
            SELECT next.kind, next.status
              FROM job_pairs p
             CROSS JOIN LATERAL (
                   SELECT j.kind, j.status FROM jobs j
                    WHERE (j.kind, j.status) > (p.kind, p.status) AND j.status IN {Statuses}
                    ORDER BY j.kind, j.status
                    LIMIT 1) next)
        """;
}
