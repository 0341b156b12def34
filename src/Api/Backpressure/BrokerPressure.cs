namespace Conveyor.Api.Backpressure;

/// <summary>What the Api last learned about the broker: job-queue depths and resource alarms.</summary>
/// <param name="Depths">Ready messages per job queue; a missing queue counts 0. Empty until the first reading.</param>
/// <param name="DepthsReadAt">When <paramref name="Depths"/> were read; null before the first reading.</param>
/// <param name="Alarms">Resource alarms in effect (such as <c>memory on rabbit@host</c>); empty when none or unknown.</param>
public sealed record BrokerPressure(
    IReadOnlyDictionary<string, long> Depths,
    DateTimeOffset? DepthsReadAt,
    IReadOnlyList<string> Alarms)
{
    public static BrokerPressure Unknown { get; } = new(new Dictionary<string, long>(), null, []);

    /// <summary>A memory or disk alarm blocks every publisher of the cluster.</summary>
    public bool PublishersBlocked => Alarms.Count > 0;
}
