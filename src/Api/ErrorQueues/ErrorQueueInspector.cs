using Conveyor.Api.Operations;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// The result of an inspection; <see cref="RunningOperationId"/> is set when the queue was busy instead.
/// <see cref="StoppedEarly"/> says why the walk ended before it had seen what it set out to see (the
/// messages it expected never arrived: another consumer took them, or holds the queue), so the result
/// covers only part of the queue.
/// </summary>
public sealed record Inspection<T>(T? Result, long QueueDepth, long Examined, bool Busy, Guid? RunningOperationId, string? StoppedEarly = null);

/// <summary>
/// Reads error queues without changing them (peek, groups). An inspection takes every message it
/// examines and releases them with requeue, so it holds the queue's lock like an operation: two walks
/// at once would each see only part of the queue. It waits briefly for another inspection to finish
/// and refuses at once while a move or purge runs. The lock lives as long as its database session, so
/// the walk watches that session and stops (<see cref="QueueLockLostException"/>, a 503) when it is
/// lost: a move could then take the queue beside it.
/// </summary>
public sealed class ErrorQueueInspector(
    QueueLocks locks,
    OperationRunner operations,
    ErrorQueueBroker broker,
    IOptions<ErrorQueueOptions> options,
    TimeProvider time,
    ILogger<ErrorQueueInspector> logger)
{
    private static readonly TimeSpan RetryInterval = TimeSpan.FromMilliseconds(100);

    public Task<Inspection<IReadOnlyList<PeekedMessage>>> PeekAsync(string queue, int limit, CancellationToken cancellationToken)
    {
        var visitor = new PeekVisitor(limit, options.Value.BodyPreviewBytes);
        return InspectAsync(queue, limit, visitor, () => visitor.Messages, cancellationToken);
    }

    public Task<Inspection<FaultGroups>> GroupsAsync(string queue, int limit, CancellationToken cancellationToken)
    {
        var visitor = new GroupsVisitor();
        return InspectAsync(
            queue, limit, visitor,
            () => new FaultGroups([.. visitor.Groups.OrderByDescending(g => g.Count).ThenBy(g => g.GroupId, StringComparer.Ordinal)], visitor.Ungrouped),
            cancellationToken);
    }

    private async Task<Inspection<T>> InspectAsync<T>(
        string queue, int limit, WalkVisitor visitor, Func<T> result, CancellationToken cancellationToken)
    {
        var waitUntil = time.GetUtcNow() + TimeSpan.FromSeconds(options.Value.InspectionWaitSeconds);
        Guid? running = null;
        var lease = await locks.AcquireAsync(
            queue,
            async token =>
            {
                running = await operations.RunningOperationIdAsync(queue, token);
                if (running is not null || time.GetUtcNow() >= waitUntil)
                {
                    return false;
                }

                await Task.Delay(RetryInterval, time, token);
                return true;
            },
            cancellationToken);
        if (lease is null)
        {
            return new Inspection<T>(default, 0, 0, Busy: true, running);
        }

        await using (lease)
        {
            return await WalkAsync(queue, limit, lease, visitor, result, cancellationToken);
        }
    }

    /// <summary>
    /// The walk under <paramref name="lease"/>. The session is checked while the walk runs, which stops
    /// it early, and once more after it, which proves the lock was held to the end: a session-level lock
    /// cannot be lost and taken again on the same session.
    /// </summary>
    private async Task<Inspection<T>> WalkAsync<T>(
        string queue, int limit, QueueLease lease, WalkVisitor visitor, Func<T> result, CancellationToken cancellationToken)
    {
        using var lost = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        using var walked = new CancellationTokenSource();
        var watch = lease.WatchAsync(lost, time, walked.Token);
        var progress = new WalkProgress();
        string? stoppedEarly;
        try
        {
            await using var connection = await broker.ConnectAsync("error-queue-inspection", lost.Token);
            var walker = new QueueWalker(connection, new WalkPlan(queue, limit, options.Value), visitor, progress, time);
            await walker.RunAsync(lost.Token);
            stoppedEarly = walker.StoppedEarly;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The watch uses the lease's connection: it must end before the lease is released.
            await walked.CancelAsync();
            if (await watch is { } failure && !cancellationToken.IsCancellationRequested)
            {
                // Stopped by the watch, or failed on its own meanwhile: either way the lock's loss is the news.
                throw LockLost(queue, failure);
            }

            throw;
        }

        await walked.CancelAsync();
        if ((await watch ?? await HeldToTheEndAsync(lease)) is { } lostAfter)
        {
            throw LockLost(queue, lostAfter);
        }

        return new Inspection<T>(result(), progress.QueueDepthAtStart, progress.Examined, Busy: false, null, stoppedEarly);
    }

    /// <summary>Null when the lock's session still answers, so it held the lock throughout; otherwise why not.</summary>
    private static async Task<Exception?> HeldToTheEndAsync(QueueLease lease)
    {
        try
        {
            await lease.CheckAsync();
            return null;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            return exception;
        }
    }

    private QueueLockLostException LockLost(string queue, Exception failure)
    {
        OperationsLog.InspectionLostLock(logger, failure, queue);
        return new QueueLockLostException(queue, failure);
    }
}
