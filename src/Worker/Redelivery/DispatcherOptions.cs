using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Redelivery;

/// <summary>Section <c>Redelivery</c>: the dispatcher that publishes due scheduled messages, in every worker.</summary>
public sealed class DispatcherOptions
{
    public const string SectionName = "Redelivery";

    public bool DispatcherEnabled { get; set; } = true;

    /// <summary>Rows claimed (FOR UPDATE SKIP LOCKED) and published per transaction.</summary>
    [Range(1, 5_000)]
    public int BatchSize { get; set; } = 200;

    /// <summary>The longest sleep without a NOTIFY; a safety net, not the normal wake-up.</summary>
    [Range(1, 300)]
    public int MaxIdleSeconds { get; set; } = 10;

    /// <summary>How long a row whose publish failed (queue gone, broker refused) waits before the next try.</summary>
    [Range(1, 3_600)]
    public int FailedPublishBackoffSeconds { get; set; } = 30;
}
