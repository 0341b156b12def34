using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Text.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Operations;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Conveyor.Api.Operations;

/// <summary>
/// Runs moves and purges in the background of the Api process: takes the queue's lock, records the
/// operation (the audit row), walks the queue, writes progress twice a second and the result at the
/// end. On shutdown, running operations stop taking messages and end cleanly (state <c>cancelled</c>).
/// </summary>
public sealed class OperationRunner(
    IDbContextFactory<ConveyorDbContext> dbFactory,
    QueueLocks locks,
    ErrorQueueBroker broker,
    IOptions<ErrorQueueOptions> options,
    IOptions<RabbitMqOptions> rabbit,
    TimeProvider time,
    ILogger<OperationRunner> logger) : IHostedService, IDisposable
{
    private const int MaxDetailLength = 2000;
    private static readonly TimeSpan JobsCheckTimeout = TimeSpan.FromSeconds(10);
    private static readonly TimeSpan ProgressInterval = TimeSpan.FromMilliseconds(500);
    private static readonly string Owner = $"{Environment.MachineName}/{Environment.ProcessId}";

    private readonly CancellationTokenSource _stopping = new();
    private readonly ConcurrentDictionary<Guid, Task> _running = new();

    public async Task<StartResult> StartAsync(OperationRequest request, CancellationToken cancellationToken)
    {
        var lease = await locks.TryAcquireAsync(request.Queue, cancellationToken);
        if (lease is null)
        {
            return new StartResult(StartStatus.Busy, RunningOperationId: await RunningOperationIdAsync(request.Queue, cancellationToken));
        }

        ErrorQueueOperation operation;
        try
        {
            operation = await RecordAsync(request, lease, cancellationToken);
        }
        catch (DbUpdateException exception) when (exception.InnerException is PostgresException { SqlState: PostgresErrorCodes.UniqueViolation })
        {
            await lease.DisposeAsync();
            return new StartResult(StartStatus.Busy, RunningOperationId: await RunningOperationIdAsync(request.Queue, cancellationToken));
        }
        catch
        {
            await lease.DisposeAsync();
            throw;
        }

        var run = Task.Run(() => ExecuteAsync(operation, request, lease), CancellationToken.None);
        _running[operation.Id] = run;
        _ = run.ContinueWith(_ => _running.TryRemove(operation.Id, out Task? _), TaskScheduler.Default);
        return new StartResult(StartStatus.Started, operation.Id);
    }

    public async Task<Guid?> RunningOperationIdAsync(string queue, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        return await db.ErrorQueueOperations.AsNoTracking()
            .OfVirtualHost(rabbit.Value.VirtualHost)
            .Where(o => o.Queue == queue && o.State == ErrorQueueOperationStates.Running)
            .Select(o => (Guid?)o.Id)
            .FirstOrDefaultAsync(cancellationToken);
    }

    private async Task<ErrorQueueOperation> RecordAsync(OperationRequest request, QueueLease lease, CancellationToken cancellationToken)
    {
        // The lock (of this vhost's queue) is free, so a row of this vhost still "running" on the queue
        // belongs to a process that died. A queue of the same name in another vhost is another queue, and
        // its operation may well be alive; so may one recorded before rows named their vhost, which is
        // left to the check for abandoned operations (it goes by staleness, right for any of them).
        // Both commands run on the lock's session, through the lease's bounded waits (no token for Npgsql, whose
        // cancel of a command on a server that stopped answering would hold the lock while it waits).
        await using (var stale = new NpgsqlCommand(
            """
            WITH stale AS (
                UPDATE error_queue_operations
                   SET state = @interrupted, finished_at = now(), updated_at = now(),
                       detail = 'The process running it stopped before it finished; unfinished messages stayed in the queue.'
                 WHERE virtual_host = @vhost AND queue = @queue AND state = @running
             RETURNING 1)
            SELECT count(*) FROM stale
            """, lease.Connection))
        {
            stale.Parameters.AddWithValue("interrupted", ErrorQueueOperationStates.Interrupted);
            stale.Parameters.AddWithValue("running", ErrorQueueOperationStates.Running);
            stale.Parameters.AddWithValue("vhost", rabbit.Value.VirtualHost);
            stale.Parameters.AddWithValue("queue", request.Queue);
            if (await QueueLease.RunForRequestAsync(stale, $"on the lock's session of '{request.Queue}'", cancellationToken) is > 0L)
            {
                OperationsLog.FoundInterrupted(logger, request.Queue);
            }
        }

        // The database's clock, as the progress writes and the check for abandoned operations use: an Api
        // whose clock is behind would otherwise write a row that check takes for abandoned at once.
        DateTimeOffset now;
        await using (var clock = new NpgsqlCommand("SELECT now()", lease.Connection))
        {
            now = new DateTimeOffset((DateTime)(await QueueLease.RunForRequestAsync(clock, $"on the lock's session of '{request.Queue}'", cancellationToken))!);
        }

        var operation = new ErrorQueueOperation
        {
            Id = Guid.CreateVersion7(time.GetUtcNow()),
            Kind = request.Kind,
            Queue = request.Queue,
            VirtualHost = rabbit.Value.VirtualHost,
            Target = request.Target,
            Filter = request.Filter.ToJson().ToJsonString(),
            Limit = request.Limit,
            DryRun = request.DryRun,
            State = ErrorQueueOperationStates.Running,
            RequestedBy = request.RequestedBy,
            ClientAddress = request.ClientAddress,
            Owner = Owner,
            MessageIds = "[]",
            Targets = "{}",
            CreatedAt = now,
            UpdatedAt = now,
        };
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        db.ErrorQueueOperations.Add(operation);
        await db.SaveChangesAsync(cancellationToken);
        return operation;
    }

    /// <summary>
    /// Runs the operation to its end and always gives the queue's lock back: were anything to throw past
    /// the walk's own handling, the lock would otherwise be held (and the queue refused to every other
    /// operation, 409) until the process exits. The row then stays <c>running</c> until the next operation
    /// on the queue, or the check for abandoned operations, marks it interrupted.
    /// </summary>
    private async Task ExecuteAsync(ErrorQueueOperation operation, OperationRequest request, QueueLease lease)
    {
        try
        {
            OperationsLog.Started(logger, operation.Id, operation.Kind, operation.Queue, operation.DryRun, operation.RequestedBy);
            await RunToEndAsync(operation, request, lease);
        }
        catch (Exception exception)
        {
            OperationsLog.Failed(logger, exception, operation.Id, operation.Queue);
        }
        finally
        {
            await lease.DisposeAsync();
        }
    }

    private async Task RunToEndAsync(ErrorQueueOperation operation, OperationRequest request, QueueLease lease)
    {
        var settings = options.Value;
        var visitor = new OperationVisitor(new OperationPlan(
            request.Kind, request.Queue, request.Filter, request.Target, request.Limit, request.DryRun, operation.Id, settings.AuditMessageIdLimit));
        var progress = new WalkProgress();
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        // The row's heartbeat outlives the walk: checking the jobs and saving the result can take tens of
        // seconds, and a row without progress for AbandonedAfterSeconds reads interrupted meanwhile.
        using var saved = new CancellationTokenSource();
        var lostLock = new StrongBox<bool>();
        var reporter = ReportProgressAsync(operation.Id, lease, visitor, progress, cancel, lostLock, saved.Token);
        try
        {
            var (state, detail, left) = await WalkAsync(operation, request, visitor, progress, cancel, lostLock);
            if (progress.Unreadable > 0)
            {
                var unreadable = $"{progress.Unreadable} message(s) could not be read and stayed in the queue; the first: {progress.FirstUnreadable}";
                detail = detail is null ? unreadable : $"{detail} {unreadable}";
                OperationsLog.Unreadable(logger, operation.Id, operation.Queue, progress.Unreadable, progress.FirstUnreadable);
            }

            var (jobIds, jobIdsPartial) = visitor.JobIds();
            var jobsMissing = await CountJobsMissingAsync(operation.Id, jobIds);
            var (messageIds, truncated, targets, errors) = visitor.Snapshot();
            if (errors.Count > 0)
            {
                detail = string.Join(" ", [.. detail is null ? [] : new[] { detail }, .. errors]);
            }

            if (jobIdsPartial && jobsMissing is not null)
            {
                detail = detail is null ? OperationVisitor.JobIdsPartialDetail : $"{detail} {OperationVisitor.JobIdsPartialDetail}";
            }

            operation.State = state;
            // Broker text (returned copies' queue names, the client's exception messages) may hold control characters.
            operation.Detail = detail is null ? null : AuditText.Clip(AuditText.Escape(detail), MaxDetailLength);
            operation.QueueDepthAtStart = progress.QueueDepthAtStart;
            operation.Examined = progress.Examined;
            operation.Matched = visitor.Matched;
            operation.Moved = visitor.Moved;
            operation.Purged = visitor.Purged;
            operation.Failed = visitor.Failed;
            operation.Left = left;
            operation.JobsMissing = jobsMissing;
            operation.MessageIds = JsonSerializer.Serialize(messageIds);
            operation.MessageIdsTruncated = truncated;
            operation.Targets = JsonSerializer.Serialize(targets);
            operation.FinishedAt = operation.UpdatedAt = time.GetUtcNow();
            await SaveResultAsync(operation);
            OperationsLog.Finished(logger, operation.Id, operation.Kind, operation.Queue, state,
                operation.Examined, operation.Matched, operation.Moved, operation.Purged, operation.Failed);
        }
        finally
        {
            // The progress writes use the lock's connection: they end before the caller releases it.
            await saved.CancelAsync();
            await reporter;
        }
    }

    /// <summary>The walk itself: how it ended (a state and why), and how many messages it left in the queue when known.</summary>
    private async Task<(string State, string? Detail, long? Left)> WalkAsync(
        ErrorQueueOperation operation, OperationRequest request, OperationVisitor visitor, WalkProgress progress, CancellationTokenSource cancel,
        StrongBox<bool> lostLock)
    {
        try
        {
            await using var connection = await broker.ConnectAsync("error-queue-operation", cancel.Token);
            var walker = new QueueWalker(connection, new WalkPlan(request.Queue, long.MaxValue, options.Value), visitor, progress, time);
            var left = await walker.RunAsync(cancel.Token);
            return (ErrorQueueOperationStates.Succeeded, walker.StoppedEarly, left);
        }
        catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
        {
            return (ErrorQueueOperationStates.Cancelled, "The Api shut down; messages not yet moved or purged stayed in the queue.", null);
        }
        catch (Exception exception)
        {
            OperationsLog.Failed(logger, exception, operation.Id, operation.Queue);
            return (ErrorQueueOperationStates.Failed,
                lostLock.Value
                    ? "Lost the database connection that holds the queue's lock, or it did not record progress in time; stopped. Messages not yet moved or purged stayed in the queue."
                    : exception.Message,
                null);
        }
    }

    /// <summary>
    /// Writes the counters through the lock's own connection until the result is saved: if that connection
    /// is lost, so is the lock, and the walk stops rather than run beside another one. A write that takes
    /// more than a third of <see cref="ErrorQueueOptions.AbandonedAfterSeconds"/> stops it too: a row without
    /// progress for that long is taken for one whose process died (<see cref="AbandonedOperations"/>). And
    /// one that takes more than <see cref="QueueLease.CheckTimeout"/> (10 s), whatever that setting: a session
    /// that does not answer may be one the server cannot reach, and the server ends such a session, releasing
    /// the lock for the next operation, after about 30 s (<see cref="QueueLocks"/>).
    /// </summary>
    private async Task ReportProgressAsync(
        Guid id, QueueLease lease, OperationVisitor visitor, WalkProgress progress, CancellationTokenSource cancel, StrongBox<bool> lostLock,
        CancellationToken saved)
    {
        var writeTimeout = TimeSpan.FromSeconds(Math.Min(options.Value.AbandonedAfterSeconds / 3.0, QueueLease.CheckTimeout.TotalSeconds));
        using var timer = new PeriodicTimer(ProgressInterval, time);
        try
        {
            while (await timer.WaitForNextTickAsync(saved))
            {
                // The targets too: a row whose process died, or whose result is refused, still says where its messages went.
                var (messageIds, truncated, targets, _) = visitor.Snapshot();
                // Only while running: a write that crosses the saved result must not touch it.
                await using var update = new NpgsqlCommand(
                    """
                    UPDATE error_queue_operations
                       SET queue_depth_at_start = @depth, examined = @examined, matched = @matched, moved = @moved,
                           purged = @purged, failed = @failed, message_ids = @ids::jsonb, message_ids_truncated = @truncated,
                           targets = @targets::jsonb, updated_at = now()
                     WHERE id = @id AND state = @running
                    """, lease.Connection);
                update.Parameters.AddWithValue("id", id);
                update.Parameters.AddWithValue("running", ErrorQueueOperationStates.Running);
                update.Parameters.AddWithValue("depth", progress.QueueDepthAtStart);
                update.Parameters.AddWithValue("examined", progress.Examined);
                update.Parameters.AddWithValue("matched", visitor.Matched);
                update.Parameters.AddWithValue("moved", visitor.Moved);
                update.Parameters.AddWithValue("purged", visitor.Purged);
                update.Parameters.AddWithValue("failed", visitor.Failed);
                update.Parameters.AddWithValue("ids", JsonSerializer.Serialize(messageIds));
                update.Parameters.AddWithValue("truncated", truncated);
                update.Parameters.AddWithValue("targets", JsonSerializer.Serialize(targets));
                // Not cancelled by the result's save: a write under way ends (within the timeout) before the lease is released.
                await QueueLease.RunAsync(update, writeTimeout, time, CancellationToken.None);
            }
        }
        catch (OperationCanceledException) when (saved.IsCancellationRequested)
        {
            // The result is saved.
        }
        catch (Exception exception)
        {
            OperationsLog.LostLock(logger, exception, id);
            lostLock.Value = true;
            await cancel.CancelAsync();
        }
    }

    /// <summary>
    /// Saves the result. When the database refuses it, the operation still ends, as <c>failed</c> with
    /// its counts and the reason; its message ids and targets stay as its progress last recorded them.
    /// Only when that fails too (the database is away) does the row stay <c>running</c>, until it is read
    /// after <see cref="ErrorQueueOptions.AbandonedAfterSeconds"/> or the next operation on the queue
    /// finds it, and is then marked interrupted.
    /// </summary>
    private async Task SaveResultAsync(ErrorQueueOperation operation)
    {
        Exception refused;
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await using var db = await dbFactory.CreateDbContextAsync(timeout.Token);
            db.ErrorQueueOperations.Update(operation);
            await db.SaveChangesAsync(timeout.Token);
            return;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            OperationsLog.ResultNotSaved(logger, exception, operation.Id);
            refused = exception;
        }

        var why = $"It ended {operation.State}, but its result could not be recorded ({Reason(refused)}): the counts are final; "
            + "the message ids and targets are those recorded while it ran and may be incomplete.";
        var detail = AuditText.Clip(AuditText.Escape(operation.Detail is null ? why : $"{why} {operation.Detail}"), MaxDetailLength);
        var hadIds = operation.MessageIdsTruncated || operation.MessageIds != "[]";
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await using var db = await dbFactory.CreateDbContextAsync(timeout.Token);
            await db.ErrorQueueOperations.Where(o => o.Id == operation.Id).ExecuteUpdateAsync(
                set => set
                    .SetProperty(o => o.State, ErrorQueueOperationStates.Failed)
                    .SetProperty(o => o.Detail, detail)
                    .SetProperty(o => o.QueueDepthAtStart, operation.QueueDepthAtStart)
                    .SetProperty(o => o.Examined, operation.Examined)
                    .SetProperty(o => o.Matched, operation.Matched)
                    .SetProperty(o => o.Moved, operation.Moved)
                    .SetProperty(o => o.Purged, operation.Purged)
                    .SetProperty(o => o.Failed, operation.Failed)
                    .SetProperty(o => o.Left, operation.Left)
                    .SetProperty(o => o.JobsMissing, operation.JobsMissing)
                    .SetProperty(o => o.MessageIdsTruncated, o => o.MessageIdsTruncated || hadIds)
                    .SetProperty(o => o.FinishedAt, operation.FinishedAt)
                    .SetProperty(o => o.UpdatedAt, operation.UpdatedAt),
                timeout.Token);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            OperationsLog.FailureNotSaved(logger, exception, operation.Id);
        }
    }

    /// <summary>
    /// How many of <paramref name="jobIds"/> (distinct) have no row in <c>jobs</c>: swept after
    /// <c>Retention:JobHours</c>, so their messages, once moved back, run again with no deduplication
    /// (<see cref="JobQueries.StatusesByIdAsync"/>, as the peek's job statuses). Null when the database
    /// cannot be read within <see cref="JobsCheckTimeout"/>: the count is advice for the operator, so it
    /// never fails the operation, which has already done its work.
    /// </summary>
    private async Task<long?> CountJobsMissingAsync(Guid operationId, IReadOnlyList<Guid> jobIds)
    {
        if (jobIds.Count == 0)
        {
            return 0;
        }

        try
        {
            using var timeout = new CancellationTokenSource(JobsCheckTimeout);
            await using var db = await dbFactory.CreateDbContextAsync(timeout.Token);
            return jobIds.Count - (await db.StatusesByIdAsync(jobIds, timeout.Token)).Count;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            OperationsLog.JobsNotChecked(logger, exception, operationId);
            return null;
        }
    }

    private static string Reason(Exception exception) => exception.GetBaseException() switch
    {
        PostgresException postgres => $"{postgres.SqlState}: {postgres.MessageText}",
        var inner => inner.Message,
    };

    Task IHostedService.StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    /// <summary>Stops running operations and waits (within the host's shutdown time) for them to end cleanly.</summary>
    public async Task StopAsync(CancellationToken cancellationToken)
    {
        await _stopping.CancelAsync();
        try
        {
            await Task.WhenAll(_running.Values).WaitAsync(cancellationToken);
        }
        catch (OperationCanceledException)
        {
            // Out of time: unacknowledged messages return to their queue when the process exits.
        }
    }

    public void Dispose() => _stopping.Dispose();
}
