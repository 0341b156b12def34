using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Per consumer, section <c>Consumers:&lt;Name&gt;</c> (env <c>Consumers__ChargePayment__PrefetchCount</c>, ...).
/// Prefetch bounds unacked messages held from the broker; the concurrency limit bounds handlers
/// in flight (and so database connections in use).
/// </summary>
public sealed class ConsumerEndpointOptions
{
    public const string SectionName = "Consumers";

    [Range(1, 10_000)]
    public int PrefetchCount { get; set; } = 32;

    [Range(1, 1_000)]
    public int ConcurrentMessageLimit { get; set; } = 16;

    /// <summary>In-memory retries for transient failures (0 = none).</summary>
    [Range(0, 20)]
    public int RetryLimit { get; set; } = 3;

    [Range(1, 60_000)]
    public int RetryMinIntervalMilliseconds { get; set; } = 200;

    [Range(1, 120_000)]
    public int RetryMaxIntervalMilliseconds { get; set; } = 2_000;

    [Range(1, 60_000)]
    public int RetryIntervalDeltaMilliseconds { get; set; } = 300;
}
