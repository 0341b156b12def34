using MassTransit.Transports.Components;

namespace Conveyor.Worker.Failures;

/// <summary>
/// MassTransit's kill switch, except that it never restarts its endpoint once the worker is stopping.
/// The kill switch restarts a paused endpoint from a timer, whatever the bus is doing by then: a pod
/// whose endpoint was paused when SIGTERM came would start consuming again in the middle of its
/// graceful shutdown, and a stopped worker hosted in a process that lives on (a test host, a
/// process hosting more than the worker) would open a new connection and take messages it can no
/// longer handle.
/// </summary>
/// <remarks>
/// The kill switch's stopped state calls <see cref="IKillSwitch.Restart"/> on the kill switch through
/// the interface, so this class re-implements that one member and leaves the rest to MassTransit.
/// </remarks>
public sealed partial class StopAwareKillSwitch(KillSwitchOptions options, string endpoint, ILogger logger, CancellationToken stopping)
    : KillSwitch(options), IKillSwitch
{
    void IKillSwitch.Restart(Exception exception, IKillSwitchState previousState)
    {
        if (stopping.IsCancellationRequested)
        {
            StaysStopped(logger, endpoint);
            return;
        }

        Restart(exception, previousState);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Kill switch: {Endpoint} stays stopped, the worker is stopping")]
    private static partial void StaysStopped(ILogger logger, string endpoint);
}
