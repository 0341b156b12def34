using System.Diagnostics;
using System.Globalization;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// CPU time used so far by this process and by the broker's Erlang VM (read from <c>/proc</c>, so only
/// when the broker runs on this machine), to tell where a move spends its work.
/// </summary>
public sealed class CpuClock(int? brokerPid)
{
    private const double TicksPerSecond = 100;

    public (TimeSpan Ours, TimeSpan? Broker) Now() => (Process.GetCurrentProcess().TotalProcessorTime, Broker());

    private TimeSpan? Broker()
    {
        if (brokerPid is not { } pid)
        {
            return null;
        }

        try
        {
            // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            return TimeSpan.FromSeconds(ticks / TicksPerSecond);
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }
}
