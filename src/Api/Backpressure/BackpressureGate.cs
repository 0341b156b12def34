using Microsoft.Extensions.Options;

namespace Conveyor.Api.Backpressure;

internal enum Admission
{
    Admitted,

    /// <summary>A memory or disk alarm: a publish would hang until the alarm clears.</summary>
    BrokerBlocked,

    /// <summary>The job kind's queue is at or over its limit.</summary>
    QueueFull,
}

internal readonly record struct AdmissionDecision(Admission Admission, string Detail = "");

/// <summary>
/// Decides from the monitor's latest reading, without any I/O, whether a job may be queued now.
/// A reading older than <see cref="BrokerPressureMonitor.StaleAfter"/> is ignored: the limits fail open
/// (the broker is then unreachable and the publish itself answers 503 after
/// <c>RabbitMq:ConnectTimeoutSeconds</c>), so a stale "full" never outlives the queue it described
/// and a stale "empty" admits nothing the broker would not take.
/// </summary>
internal sealed class BackpressureGate(BrokerPressureMonitor monitor, IOptions<BackpressureOptions> options, TimeProvider clock)
{
    public int RetryAfterSeconds => options.Value.RetryAfterSeconds;

    /// <summary>
    /// Whether a job to run at <paramref name="runAt"/> (null: now) must pass <see cref="Check"/>: an immediate
    /// one, or one due within <see cref="BackpressureOptions.GateScheduledWithinSeconds"/>. A job due later
    /// publishes nothing now, so neither the queue's depth nor a broker alarm concerns it.
    /// </summary>
    public bool Gates(DateTimeOffset? runAt) =>
        runAt is not { } at || at - clock.GetUtcNow() <= TimeSpan.FromSeconds(options.Value.GateScheduledWithinSeconds);

    public AdmissionDecision Check(string kind)
    {
        var pressure = monitor.Current;
        if (pressure.PublishersBlocked)
        {
            return new AdmissionDecision(Admission.BrokerBlocked,
                $"RabbitMQ is blocking publishers ({string.Join("; ", pressure.Alarms)}).");
        }

        var limit = options.Value.LimitFor(kind);
        var maxAge = monitor.StaleAfter;
        if (limit > 0
            && pressure.DepthsReadAt is { } readAt
            && clock.GetUtcNow() - readAt <= maxAge
            && pressure.Depths.TryGetValue(kind, out var depth)
            && depth >= limit)
        {
            return new AdmissionDecision(Admission.QueueFull,
                $"The {kind} queue holds {depth} waiting jobs; its limit is {limit}.");
        }

        return new AdmissionDecision(Admission.Admitted);
    }
}
