using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Jobs;

/// <summary>
/// The reconciler of ADR 0007: publishes again the commands of stranded jobs (still <c>queued</c>
/// although their command cannot be in their queue, see <see cref="StrandedJobsMonitor"/>) from the
/// body each was submitted with, stamped with the job's id. If the first command is somewhere after all, the
/// worker's inbox (keyed by the business key) applies the job once.
/// </summary>
/// <remarks>
/// A job is claimed before it is published by moving its <c>updated_at</c> to now, in one
/// statement with <c>FOR UPDATE SKIP LOCKED</c>, so two Api replicas never both publish it, and the
/// same job is not published again before another threshold has passed. A job whose publish fails
/// gets its old <c>updated_at</c> back: it still counts as stranded and is tried at the next check.
/// The claim commits on its own, so a claim whose answer is lost on the way back leaves its jobs
/// claimed, unpublished, until another threshold has passed: a warning says how many and from when.
/// </remarks>
public sealed partial class StrandedJobRepublisher(
    IServiceScopeFactory scopes,
    IDbContextFactory<ConveyorDbContext> dbFactory,
    IOptions<RabbitMqOptions> rabbitMq,
    IOptions<StrandedJobsOptions> options,
    WebhookUrlRules webhookUrls,
    IMeterFactory meters,
    TimeProvider time,
    ILogger<StrandedJobRepublisher> logger)
{
    public const string Instrument = "conveyor.jobs.republished";

    /// <summary>
    /// Jobs of each kind claimed and published per call at most; a check calls again while a call publishes any. Per
    /// kind, so that a kind whose jobs cannot be published (no queue takes its commands) never fills a whole claim.
    /// </summary>
    public const int BatchSize = 100;

    /// <summary>
    /// Bounds the memory of which stored requests were refused (logged once each, and left out of later
    /// claims); past it, further refusals are neither logged nor left out.
    /// </summary>
    private const int MaxRefusalsRemembered = 10_000;

    private readonly ConcurrentDictionary<Guid, byte> _refusalsLogged = new();

    private readonly Counter<long> _republished = meters.Create(ApiApp.ApiMeterName).CreateCounter<long>(
        Instrument, "{job}", "Stranded jobs whose command the Api published again from the stored request.");

    /// <summary>
    /// Publishes the commands of up to <see cref="BatchSize"/> stranded jobs of each kind: still <c>queued</c>,
    /// of a kind in <paramref name="strandedBefore"/> and last updated before its time there. A kind whose
    /// publish fails is left for the next check; the other kinds' jobs are still published.
    /// Returns how many were published.
    /// </summary>
    public async Task<int> RepublishAsync(IReadOnlyDictionary<string, DateTimeOffset> strandedBefore, CancellationToken cancellationToken)
    {
        if (strandedBefore.Count == 0)
        {
            return 0;
        }

        var claimedAt = time.GetUtcNow();
        // Jobs this Api found it cannot publish stay out of the claim: they keep their old update time
        // (still counted, still alerted on), and would otherwise take the oldest places of every
        // claim, so a hundred of them would keep every valid stranded job behind them waiting forever.
        var refused = _refusalsLogged.Keys.ToArray();
        var kinds = strandedBefore.Keys.ToArray();
        var befores = kinds.Select(kind => strandedBefore[kind]).ToArray();
        List<ClaimedJob> claimed;
        await using (var db = await dbFactory.CreateDbContextAsync(cancellationToken))
        {
            // Opened first: a claim that could not even be sent (the database away) took nothing, and
            // the check's own failure says so, once per outage.
            await db.Database.OpenConnectionAsync(cancellationToken);
            try
            {
                // Per kind, one range of the (kind, status, created_at, id) index (created_at <= updated_at,
                // so bounding created_at keeps a backlog's newer rows out of it): another kind's backlog is
                // never read, whatever the statistics say. Each kind's oldest updates, up to a batch of each:
                // a kind whose commands no queue takes leaves the others their places. The status is a literal,
                // not a parameter: the index is partial on the statuses (JobIndexRanges.Statuses), which a
                // generic plan can prove only of a literal.
                claimed = await db.Database.SqlQuery<ClaimedJob>($"""
                    WITH picked AS (
                        SELECT c.id, c.updated_at
                          FROM unnest({kinds}::text[], {befores}::timestamptz[]) AS t(kind, stranded_before)
                         CROSS JOIN LATERAL (
                               SELECT j.id, j.updated_at FROM jobs j
                                WHERE j.kind = t.kind AND j.status = 'queued'
                                  AND j.created_at < t.stranded_before AND j.updated_at < t.stranded_before
                                  AND j.request_body IS NOT NULL
                                  AND j.id <> ALL({refused})
                                ORDER BY j.updated_at
                                LIMIT {BatchSize}
                                  FOR UPDATE OF j SKIP LOCKED) c)
                    UPDATE jobs SET updated_at = {claimedAt}
                      FROM picked
                     WHERE jobs.id = picked.id
                    RETURNING jobs.id, jobs.kind, jobs.business_key, jobs.request_body, picked.updated_at AS previous_update
                    """).ToListAsync(cancellationToken); // not composed: a data-modifying WITH must stay at the top level
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // The statement commits on its own: a read of its answer that fails (a connection lost, a
                // shutdown) may leave jobs claimed, out of the stranded count and of every check until a
                // threshold has passed since the claim, with nothing in the log to say so.
                await LogClaimNotReadAsync(kinds, claimedAt);
                throw;
            }
        }

        if (claimed.Count == 0)
        {
            return 0;
        }

        var published = 0;
        // The kinds whose publish failed in this call, and the jobs of theirs handed back unpublished.
        var failedKinds = new HashSet<string>(StringComparer.Ordinal);
        var notTried = new List<ClaimedJob>();
        using var scope = scopes.CreateScope();
        var publishEndpoint = scope.ServiceProvider.GetRequiredService<IPublishEndpoint>();
        foreach (var job in claimed.OrderBy(j => j.PreviousUpdate))
        {
            if (failedKinds.Contains(job.Kind) || cancellationToken.IsCancellationRequested)
            {
                notTried.Add(job);
                continue;
            }

            var errors = new FieldErrors();
            var request = JobRequestParser.ReadStored(
                job.Kind, job.RequestBody, job.BusinessKey, errors, time.GetUtcNow(), webhookUrls);
            if (request is null)
            {
                // Valid when it was submitted; this version's rules or settings refuse it now. It stays
                // stranded (counted by the gauge); the log says why once per job, not at every check.
                if (_refusalsLogged.Count < MaxRefusalsRemembered && _refusalsLogged.TryAdd(job.Id, 0))
                {
                    var reasons = errors.Count > 0
                        ? string.Join("; ", errors.ToDictionary().Select(e => $"{e.Key}: {string.Join(" ", e.Value)}"))
                        : "it no longer names the job's business id, or schedules it for later";
                    LogNotRepublishable(logger, job.Id, job.Kind, reasons);
                }

                await RestoreAsync([job], claimedAt);
                continue;
            }

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            timeout.CancelAfter(TimeSpan.FromSeconds(rabbitMq.Value.ConnectTimeoutSeconds));
            try
            {
                await request.PublishAsync(publishEndpoint, job.Id, timeout.Token);
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // The broker is away, or no queue takes this kind's commands (returned to a mandatory publish):
                // the rest of the kind would fail alike, and are tried at the next check. Another kind's jobs
                // are still tried: ended here, a kind whose queue is missing kept every other kind's stranded
                // jobs waiting behind its oldest, check after check.
                LogRepublishFailed(logger, exception, job.Id, job.Kind);
                failedKinds.Add(job.Kind);
                notTried.Add(job);
                continue;
            }

            published++;
            _republished.Add(1, new KeyValuePair<string, object?>("kind", job.Kind));
            LogRepublished(logger, job.Id, job.Kind, job.BusinessKey, claimedAt - job.PreviousUpdate);
        }

        if (notTried.Count > 0)
        {
            await RestoreAsync(notTried, claimedAt);
        }

        return published;
    }

    /// <summary>
    /// After a claim whose answer could not be read, says how many jobs it took, if any, and when they are
    /// tried again. They are not lost: still <c>queued</c>, updated at the claim, so stranded again once the
    /// threshold has passed since it. Their old <c>updated_at</c> went with the answer, so they cannot be
    /// handed back as <see cref="RestoreAsync"/> does. Counted by the claim's own time, which only its
    /// rows carry; not tied to the caller's cancellation, which may be what cut the read short.
    /// </summary>
    private async Task LogClaimNotReadAsync(string[] kinds, DateTimeOffset claimedAt)
    {
        var retryAt = claimedAt.AddSeconds(options.Value.StrandedAfterSeconds);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await using var db = await dbFactory.CreateDbContextAsync(timeout.Token);
            var count = await db.Database.SqlQuery<long>($"""
                SELECT count(*) AS "Value" FROM jobs
                 WHERE kind = ANY({kinds}) AND status = 'queued' AND updated_at = {claimedAt}
                """).SingleAsync(timeout.Token);
            if (count > 0)
            {
                LogClaimNotRead(logger, count, claimedAt, retryAt);
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // Nor can it be counted (the database is away): what the claim may have taken, at most.
            LogClaimNotCounted(logger, exception, BatchSize * kinds.Length, claimedAt, retryAt);
        }
    }

    /// <summary>Gives jobs that were claimed and not published their old <c>updated_at</c> back.</summary>
    private async Task RestoreAsync(IReadOnlyList<ClaimedJob> jobs, DateTimeOffset claimedAt)
    {
        var ids = jobs.Select(j => j.Id).ToArray();
        var previous = jobs.Select(j => j.PreviousUpdate).ToArray();
        // Not tied to the caller's cancellation: a stopping Api still hands its claims back.
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await using var db = await dbFactory.CreateDbContextAsync(timeout.Token);
            // "IS TRUE": found by primary key, not through the status index (see JobSubmitter.SecureRecentAsync).
            await db.Database.ExecuteSqlInterpolatedAsync($"""
                UPDATE jobs SET updated_at = t.previous
                  FROM unnest({ids}::uuid[], {previous}::timestamptz[]) AS t(id, previous)
                 WHERE jobs.id = t.id AND (jobs.status = {JobStatus.Queued} AND jobs.updated_at = {claimedAt}) IS TRUE
                """, timeout.Token);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // They are tried again once the threshold has passed since the claim.
            LogRestoreFailed(logger, exception, ids.Length);
        }
    }

    private sealed record ClaimedJob(Guid Id, string Kind, string BusinessKey, byte[] RequestBody, DateTimeOffset PreviousUpdate);

    [LoggerMessage(EventId = 1008, Level = LogLevel.Warning,
        Message = "Job {JobId} ({Kind} {BusinessKey}) was still queued {Age} after its last update, though its command could not be in the queue: its command was published again from the stored request (the inbox applies it once)")]
    private static partial void LogRepublished(ILogger logger, Guid jobId, string kind, string businessKey, TimeSpan age);

    [LoggerMessage(EventId = 1009, Level = LogLevel.Error,
        Message = "Stranded job {JobId} ({Kind}) cannot be published again: its stored request is no longer valid ({Errors}). Cancel it or submit it anew")]
    private static partial void LogNotRepublishable(ILogger logger, Guid jobId, string kind, string errors);

    [LoggerMessage(EventId = 1010, Level = LogLevel.Warning,
        Message = "Publishing stranded job {JobId} ({Kind}) again was not confirmed; it is tried again at the next check")]
    private static partial void LogRepublishFailed(ILogger logger, Exception exception, Guid jobId, string kind);

    [LoggerMessage(EventId = 1011, Level = LogLevel.Warning,
        Message = "Could not hand back the claim on {Count} stranded job(s) that were not published; they are tried again after the stranding threshold")]
    private static partial void LogRestoreFailed(ILogger logger, Exception exception, int count);

    [LoggerMessage(EventId = 1016, Level = LogLevel.Warning,
        Message = "{Count} stranded job(s) were claimed at {ClaimedAt:O}, but the claim's answer could not be read, so they were not published; they count as updated at the claim, and are tried again from {RetryAt:O} on, once the stranding threshold has passed since it")]
    private static partial void LogClaimNotRead(ILogger logger, long count, DateTimeOffset claimedAt, DateTimeOffset retryAt);

    [LoggerMessage(EventId = 1017, Level = LogLevel.Warning,
        Message = "A claim of stranded jobs at {ClaimedAt:O} could not be read, nor could the jobs it took be counted: up to {Count} job(s) may have been claimed and not published; any are tried again from {RetryAt:O} on, once the stranding threshold has passed since the claim")]
    private static partial void LogClaimNotCounted(ILogger logger, Exception exception, int count, DateTimeOffset claimedAt, DateTimeOffset retryAt);
}
