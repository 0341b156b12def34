using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Hosting;

/// <summary>
/// Section <c>Shutdown</c>. On SIGTERM the consumers get <see cref="ConsumerStopTimeoutSeconds"/> to
/// finish in-flight messages (then their cancellation token fires and unfinished messages are
/// returned to the queue), the bus gets <see cref="BusStopTimeoutSeconds"/>, the host
/// <see cref="HostShutdownTimeoutSeconds"/>. Keep consumer &lt; bus ≤ host &lt; the pod's
/// terminationGracePeriodSeconds, and every one far below RabbitMQ's consumer_timeout (30 min).
/// </summary>
public sealed class ShutdownOptions : IValidatableObject
{
    public const string SectionName = "Shutdown";

    [Range(1, 600)]
    public int ConsumerStopTimeoutSeconds { get; set; } = 20;

    [Range(1, 600)]
    public int BusStopTimeoutSeconds { get; set; } = 25;

    [Range(1, 600)]
    public int HostShutdownTimeoutSeconds { get; set; } = 30;

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (ConsumerStopTimeoutSeconds >= BusStopTimeoutSeconds)
        {
            yield return new ValidationResult(
                $"{SectionName}:{nameof(ConsumerStopTimeoutSeconds)} ({ConsumerStopTimeoutSeconds}) must be less than {SectionName}:{nameof(BusStopTimeoutSeconds)} ({BusStopTimeoutSeconds})",
                [nameof(ConsumerStopTimeoutSeconds)]);
        }

        if (BusStopTimeoutSeconds > HostShutdownTimeoutSeconds)
        {
            yield return new ValidationResult(
                $"{SectionName}:{nameof(BusStopTimeoutSeconds)} ({BusStopTimeoutSeconds}) must not exceed {SectionName}:{nameof(HostShutdownTimeoutSeconds)} ({HostShutdownTimeoutSeconds})",
                [nameof(BusStopTimeoutSeconds)]);
        }
    }
}
