using System.ComponentModel.DataAnnotations;

namespace Conveyor.Api.ErrorQueues;

/// <summary>Error-queue inspection and moves. Environment variables: <c>ErrorQueues__Prefetch</c>, ...</summary>
public sealed class ErrorQueueOptions
{
    public const string SectionName = "ErrorQueues";

    /// <summary>
    /// Unacknowledged messages the broker sends ahead on each consuming channel; also the bound on
    /// copies awaiting their confirm. Messages the filter leaves behind occupy this window until the
    /// end, so the walker opens a fresh channel when half of it is taken by them (see ADR 0002).
    /// </summary>
    [Range(10, 10_000)]
    public int Prefetch { get; set; } = 1000;

    /// <summary>
    /// Channels one walk may open for left-behind messages; with <see cref="Prefetch"/> this bounds how
    /// many non-matching messages a single walk can pass over (Prefetch / 2 per channel). RabbitMQ allows
    /// 2047 channels per connection by default.
    /// </summary>
    [Range(1, 2000)]
    public int MaxChannels { get; set; } = 1500;

    /// <summary>Copies awaiting their confirm may hold at most this many body bytes in memory.</summary>
    [Range(1024, 1024 * 1024 * 1024)]
    public int MaxPendingBytes { get; set; } = 16 * 1024 * 1024;

    /// <summary>Moves and purges act on at most this many messages per second; 0 = as fast as the broker allows.</summary>
    [Range(0, 1_000_000)]
    public int MaxMessagesPerSecond { get; set; }

    /// <summary>With no delivery for this long, the walker asks the broker whether the queue is empty.</summary>
    [Range(100, 60_000)]
    public int IdleCheckMilliseconds { get; set; } = 1000;

    /// <summary>
    /// How long a walk waits for the broker: a confirm while its window is full, a write that does not drain,
    /// an answer at its end. Past it the walk ends as failed and drops its connection (the originals stay).
    /// </summary>
    [Range(1, 600)]
    public int ConfirmTimeoutSeconds { get; set; } = 30;

    /// <summary>Bytes of each body shown by <c>GET .../messages</c>.</summary>
    [Range(0, 64 * 1024)]
    public int BodyPreviewBytes { get; set; } = 1024;

    /// <summary>Message ids an operation records for the audit trail.</summary>
    [Range(0, 100_000)]
    public int AuditMessageIdLimit { get; set; } = 1000;

    /// <summary>How long an inspection waits for another inspection of the same queue to finish.</summary>
    [Range(0, 300)]
    public int InspectionWaitSeconds { get; set; } = 10;

    /// <summary>
    /// A move or purge still "running" whose progress has not been written for this long is shown, and
    /// recorded, as <c>interrupted</c>: the process running it stopped (killed, out of memory, a shutdown
    /// out of time). A live operation writes its progress twice a second, and stops itself when it
    /// cannot for a third of this time (at most 10 s, before PostgreSQL could release its lock to another),
    /// so it is never taken for one; set the same on every replica.
    /// </summary>
    [Range(2, 86_400)]
    public int AbandonedAfterSeconds { get; set; } = 30;

    /// <summary>How often the error-queue depth gauge is refreshed from the management API.</summary>
    [Range(1, 3600)]
    public int DepthRefreshSeconds { get; set; } = 15;
}
