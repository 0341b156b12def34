using Conveyor.Api.Hosting;
using Conveyor.Contracts;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using System.Buffers.Binary;
using System.Buffers.Text;

namespace Conveyor.Api.Jobs;

/// <summary>A validated <c>GET /api/jobs</c> query: <paramref name="Cursor"/> is where the previous page ended, in <paramref name="OldestFirst"/>'s order.</summary>
internal sealed record JobQuery(string? Status, string? Kind, string? BusinessKey, int Limit, JobCursor? Cursor, bool OldestFirst = false);

/// <summary>
/// Where a page ended: the (created_at, id) of its last job. Sent to clients as opaque base64url of
/// the creation time in microseconds (PostgreSQL's precision) and the id, 24 bytes.
/// </summary>
internal sealed record JobCursor(DateTimeOffset CreatedAt, Guid Id)
{
    private const int Length = sizeof(long) + 16;

    public static JobCursor From(Job job) => new(job.CreatedAt, job.Id);

    public string Encode()
    {
        Span<byte> bytes = stackalloc byte[Length];
        var micros = (CreatedAt.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) / (TimeSpan.TicksPerMillisecond / 1000);
        BinaryPrimitives.WriteInt64BigEndian(bytes, micros);
        Id.TryWriteBytes(bytes[sizeof(long)..], bigEndian: true, out _);
        return Base64Url.EncodeToString(bytes);
    }

    public static JobCursor? Decode(string text)
    {
        // TryDecodeFromChars throws on characters outside the alphabet: check them first.
        Span<byte> bytes = stackalloc byte[Length + 3];
        if (!Base64Url.IsValid(text, out var decodedLength) || decodedLength != Length
            || !Base64Url.TryDecodeFromChars(text, bytes, out var written) || written != Length)
        {
            return null;
        }

        // Bounded before the multiplication, which could otherwise overflow into a valid-looking time.
        const long ticksPerMicro = TimeSpan.TicksPerMillisecond / 1000;
        var micros = BinaryPrimitives.ReadInt64BigEndian(bytes);
        if (micros < 0 || micros > (DateTimeOffset.MaxValue.UtcTicks - DateTimeOffset.UnixEpoch.UtcTicks) / ticksPerMicro)
        {
            return null;
        }

        var ticks = DateTimeOffset.UnixEpoch.UtcTicks + (micros * ticksPerMicro);

        return new JobCursor(new DateTimeOffset(ticks, TimeSpan.Zero), new Guid(bytes[sizeof(long)..Length], bigEndian: true));
    }
}

/// <summary>
/// <c>GET /api/jobs</c>: newest first, keyset paging on (created_at, id), optional status, kind and business-key filters;
/// with <c>order=oldest</c>, oldest first up to the settle horizon, a feed that misses no job (ADR 0013).
/// </summary>
internal static class JobListing
{
    public const int DefaultLimit = 50;
    public const int MaxLimit = 500;

    public const string NewestFirst = "newest";
    public const string OldestFirst = "oldest";

    /// <summary>Null when <paramref name="errors"/> received at least one error, each under its query parameter's name.</summary>
    public static JobQuery? Parse(
        string? status, string? kind, string? businessKey, string? limit, string? cursor, string? order, FieldErrors errors)
    {
        if (order is not null and not NewestFirst and not OldestFirst)
        {
            errors.Add("order", $"Must be {NewestFirst} (the default) or {OldestFirst}.");
        }

        if (status is not null && !JobStatus.All.Contains(status, StringComparer.Ordinal))
        {
            errors.Add("status", $"Must be one of: {string.Join(", ", JobStatus.All)}.");
        }

        if (kind is not null && !JobKinds.All.Contains(kind, StringComparer.Ordinal))
        {
            errors.Add("kind", $"Must be one of: {string.Join(", ", JobKinds.All)}.");
        }

        // Every kind's business key is a UUID (paymentId, webhookId, reportId), stored in its "D" form:
        // anything else finds nothing, and text PostgreSQL refuses (a NUL) would be a 500. Unique per
        // kind (and indexed so): without the kind it would scan every job.
        if (businessKey is not null)
        {
            if (!Guid.TryParseExact(businessKey, "D", out var id) || kind is null)
            {
                errors.Add("businessKey", "Must be a UUID such as 0b6f3f3e-5d55-4b43-9d6c-6f1f8c7e2a10 (a paymentId, webhookId or reportId), with kind given too.");
            }
            else
            {
                businessKey = id.ToString("D");
            }
        }

        if (!QueryIntegers.TryRead(limit, DefaultLimit, 1, MaxLimit, out var pageSize))
        {
            errors.Add("limit", $"Must be an integer from 1 to {MaxLimit}.");
        }

        JobCursor? after = null;
        if (cursor is not null && (after = JobCursor.Decode(cursor)) is null)
        {
            errors.Add("cursor", "Must be the nextCursor of an earlier page, unchanged.");
        }

        return errors.Count > 0 ? null : new JobQuery(status, kind, businessKey, pageSize, after, order == OldestFirst);
    }

    /// <summary>
    /// The newest jobs before the cursor, per (kind, status) pair one backward index range of at most
    /// a page (<see cref="JobIndexRanges"/>), merged: a page reads at most a page per pair present,
    /// whatever the table's size and whichever filters are given. Then the page's rows themselves.
    /// </summary>
    private const string PageSql = $"""
        WITH RECURSIVE {JobIndexRanges.KindStatusPairs},
        page AS (
            SELECT r.id, r.created_at
              FROM job_pairs p
             CROSS JOIN LATERAL (
                   SELECT j.id, j.created_at FROM jobs j
                    WHERE j.kind = p.kind AND j.status = p.status AND j.status IN {JobIndexRanges.Statuses}
                      AND (j.created_at, j.id) < (@before_created_at, @before_id)
                    ORDER BY j.created_at DESC, j.id DESC
                    LIMIT @take) r
             WHERE (@kind IS NULL OR p.kind = @kind) AND (@status IS NULL OR p.status = @status)
             ORDER BY r.created_at DESC, r.id DESC
             LIMIT @take)
        SELECT j.* FROM page JOIN jobs j ON j.id = page.id
        """;

    /// <summary>
    /// <see cref="PageSql"/> the other way: the oldest jobs after the cursor and before the settle horizon, one forward
    /// index range per (kind, status) pair.
    /// </summary>
    private const string OldestFirstPageSql = $"""
        WITH RECURSIVE {JobIndexRanges.KindStatusPairs},
        page AS (
            SELECT r.id, r.created_at
              FROM job_pairs p
             CROSS JOIN LATERAL (
                   SELECT j.id, j.created_at FROM jobs j
                    WHERE j.kind = p.kind AND j.status = p.status AND j.status IN {JobIndexRanges.Statuses}
                      AND (j.created_at, j.id) > (@after_created_at, @after_id) AND j.created_at < @horizon
                    ORDER BY j.created_at, j.id
                    LIMIT @take) r
             WHERE (@kind IS NULL OR p.kind = @kind) AND (@status IS NULL OR p.status = @status)
             ORDER BY r.created_at, r.id
             LIMIT @take)
        SELECT j.* FROM page JOIN jobs j ON j.id = page.id
        """;

    public static async Task<JobPage> ListAsync(ConveyorDbContext db, JobQuery query, SettleHorizon settle, CancellationToken cancellationToken)
    {
        if (query.OldestFirst)
        {
            return await ListOldestFirstAsync(db, query, settle, cancellationToken);
        }

        // As many as ReadPageAsync reads: one more than asked for.
        var take = query.Limit + 1;
        IQueryable<Job> jobs;
        if (query.BusinessKey is not null)
        {
            // At most one job: the (kind, business_key) unique index.
            jobs = ByBusinessKey(db, query);
            if (query.Cursor is { } after)
            {
                jobs = jobs.Where(j => EF.Functions.LessThan(
                    ValueTuple.Create(j.CreatedAt, j.Id), ValueTuple.Create(after.CreatedAt, after.Id)));
            }
        }
        else
        {
            // No cursor: before any job (.NET's latest time), so one statement serves every page.
            var before = query.Cursor ?? new JobCursor(DateTimeOffset.MaxValue, Guid.AllBitsSet);
            jobs = db.Jobs.FromSqlRaw(
                PageSql,
                new NpgsqlParameter<string?>("kind", query.Kind),
                new NpgsqlParameter<string?>("status", query.Status),
                new NpgsqlParameter<DateTimeOffset>("before_created_at", before.CreatedAt),
                new NpgsqlParameter<Guid>("before_id", before.Id),
                new NpgsqlParameter<int>("take", take));
        }

        var (page, more) = await ReadPageAsync(
            jobs.OrderByDescending(j => j.CreatedAt).ThenByDescending(j => j.Id), query.Limit, cancellationToken);
        var next = more ? JobCursor.From(page[^1]).Encode() : null;
        return new JobPage([.. page.Select(JobDetails.From)], next);
    }

    /// <summary>
    /// Oldest first, only jobs created before the settle horizon (the database's clock, read before the page, less
    /// <see cref="SettleHorizon.Horizon"/>): no job row can still commit there, so a cursor never passes a job that
    /// appears later. The next cursor is never null: after a short page it is the horizon itself, from which the
    /// client polls for the jobs that settle meanwhile.
    /// </summary>
    private static async Task<JobPage> ListOldestFirstAsync(
        ConveyorDbContext db, JobQuery query, SettleHorizon settle, CancellationToken cancellationToken)
    {
        // Read in a statement of its own, before the page's: every row created before it was committed by then.
        var now = await db.Database.SqlQuery<DateTimeOffset>($"""SELECT clock_timestamp() AS "Value" """).SingleAsync(cancellationToken);
        var horizon = now - settle.Horizon;
        var after = query.Cursor ?? new JobCursor(DateTimeOffset.UnixEpoch, Guid.Empty);

        var take = query.Limit + 1;
        IQueryable<Job> jobs;
        if (query.BusinessKey is not null)
        {
            jobs = ByBusinessKey(db, query).Where(j => j.CreatedAt < horizon && EF.Functions.GreaterThan(
                ValueTuple.Create(j.CreatedAt, j.Id), ValueTuple.Create(after.CreatedAt, after.Id)));
        }
        else
        {
            jobs = db.Jobs.FromSqlRaw(
                OldestFirstPageSql,
                new NpgsqlParameter<string?>("kind", query.Kind),
                new NpgsqlParameter<string?>("status", query.Status),
                new NpgsqlParameter<DateTimeOffset>("after_created_at", after.CreatedAt),
                new NpgsqlParameter<Guid>("after_id", after.Id),
                new NpgsqlParameter<DateTimeOffset>("horizon", horizon),
                new NpgsqlParameter<int>("take", take));
        }

        var (page, more) = await ReadPageAsync(jobs.OrderBy(j => j.CreatedAt).ThenBy(j => j.Id), query.Limit, cancellationToken);
        // A full page: on from its last job. A short one listed every settled job after the cursor: on from the horizon
        // (no job has the empty id), unless the cursor is there already (the database's clock stepped back since).
        var next = more ? JobCursor.From(page[^1])
            : after.CreatedAt >= horizon ? after
            : new JobCursor(horizon, Guid.Empty);
        return new JobPage([.. page.Select(JobDetails.From)], next.Encode());
    }

    /// <summary>The first <paramref name="limit"/> jobs in <paramref name="ordered"/>'s order, and whether more follow.</summary>
    private static async Task<(List<Job> Page, bool More)> ReadPageAsync(IQueryable<Job> ordered, int limit, CancellationToken cancellationToken)
    {
        // One more than asked for tells whether another page follows.
        var rows = await ordered.AsNoTracking().Take(limit + 1).WithoutRequestBody().ToListAsync(cancellationToken);
        return rows.Count > limit ? (rows[..limit], true) : (rows, false);
    }

    private static IQueryable<Job> ByBusinessKey(ConveyorDbContext db, JobQuery query)
    {
        var jobs = db.Jobs.Where(j => j.Kind == query.Kind && j.BusinessKey == query.BusinessKey);
        return query.Status is null ? jobs : jobs.Where(j => j.Status == query.Status);
    }
}
