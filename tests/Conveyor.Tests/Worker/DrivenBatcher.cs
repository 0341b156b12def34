using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Conveyor.Tests.Worker;

/// <summary>
/// An <see cref="InboxBatcher"/> that a test drives against the real database, with the messages it joined.
/// Disposing it fails every message whose batch has not completed, so no batch waits for ever on a
/// consumer that will not answer, then stops the batcher.
/// </summary>
public sealed class DrivenBatcher(InboxBatcher batcher) : IAsyncDisposable
{
    private readonly List<BatchMember> _joined = [];

    /// <summary>A batcher of <c>charge-payment</c> jobs whose messages gather as long as a batch is in the database (no time limit).</summary>
    public static DrivenBatcher Start(ConveyorFixture fixture, string consumerId, ILogger? logger = null) =>
        new(new InboxBatcher(consumerId, "charge-payment", maxBatch: 64, maxConcurrentBatches: 4, eagerBatches: 1, fixture.DbContextFactory(),
            TimeProvider.System, logger ?? NullLogger.Instance, Timeout.InfiniteTimeSpan));

    public BatchMember Join(string key, Guid? claimedJobId, byte[]? fingerprint)
    {
        var member = batcher.Join(key, Guid.NewGuid(), claimedJobId, fingerprint);
        _joined.Add(member);
        return member;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var member in _joined.Where(m => !m.Completed.IsCompleted))
        {
            member.RanAndFailed();
        }

        await batcher.DisposeAsync();
    }
}
