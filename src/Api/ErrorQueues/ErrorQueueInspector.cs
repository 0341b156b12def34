using Conveyor.Api.Operations;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.ErrorQueues;

/// <summary>The result of an inspection; <see cref="RunningOperationId"/> is set when the queue was busy instead.</summary>
public sealed record Inspection<T>(T? Result, long QueueDepth, long Examined, bool Busy, Guid? RunningOperationId);

/// <summary>
/// Reads error queues without changing them (peek, groups). An inspection takes every message it
/// examines and releases them with requeue, so it holds the queue's lock like an operation: two walks
/// at once would each see only part of the queue. It waits briefly for another inspection to finish
/// and refuses at once while a move or purge runs.
/// </summary>
public sealed class ErrorQueueInspector(
    QueueLocks locks,
    OperationRunner operations,
    ErrorQueueBroker broker,
    IOptions<ErrorQueueOptions> options,
    TimeProvider time)
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
        QueueLease? lease;
        while ((lease = await locks.TryAcquireAsync(queue, cancellationToken)) is null)
        {
            var running = await operations.RunningOperationIdAsync(queue, cancellationToken);
            if (running is not null || time.GetUtcNow() >= waitUntil)
            {
                return new Inspection<T>(default, 0, 0, Busy: true, running);
            }

            await Task.Delay(RetryInterval, time, cancellationToken);
        }

        await using (lease)
        {
            await using var connection = await broker.ConnectAsync("error-queue-inspection", cancellationToken);
            var progress = new WalkProgress();
            var walker = new QueueWalker(connection, new WalkPlan(queue, limit, options.Value), visitor, progress, time);
            await walker.RunAsync(cancellationToken);
            return new Inspection<T>(result(), progress.QueueDepthAtStart, progress.Examined, Busy: false, null);
        }
    }
}
