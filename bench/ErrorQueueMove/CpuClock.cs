using System.Diagnostics;
using System.Globalization;
using Conveyor.Bench.Infrastructure;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// CPU time used so far by this process and by the broker's Erlang VM (read from <c>/proc</c>, so only
/// when the broker runs on this machine), to tell where a move spends its work.
/// </summary>
public sealed class CpuClock(int? brokerPid)
{
    public (TimeSpan Ours, TimeSpan? Broker) Now() => (Process.GetCurrentProcess().TotalProcessorTime, Broker());

    private TimeSpan? Broker() =>
        brokerPid is { } pid && ProcStat.Read(pid.ToString(CultureInfo.InvariantCulture)) is { } broker
            ? TimeSpan.FromSeconds(broker.CpuTicks / ProcStat.TicksPerSecond)
            : null;
}
