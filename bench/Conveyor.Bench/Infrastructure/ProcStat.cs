using System.Globalization;

namespace Conveyor.Bench.Infrastructure;

/// <summary>
/// Reads a process's <c>/proc/&lt;pid&gt;/stat</c>: its command name and the CPU it has used (user +
/// system, in clock ticks of 10 ms). Shared by both benchmark programs (bench/ErrorQueueMove links it).
/// </summary>
public static class ProcStat
{
    public const double TicksPerSecond = 100;

    /// <summary>Null when the process is gone or its stat cannot be read.</summary>
    public static (string Command, long CpuTicks)? Read(string pid)
    {
        try
        {
            // pid (comm) state ...: after the parenthesised name, utime and stime are the 12th and 13th fields.
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var open = stat.IndexOf('(', StringComparison.Ordinal);
            var close = stat.LastIndexOf(')');
            var fields = stat[(close + 2)..].Split(' ');
            var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            return (stat[(open + 1)..close], ticks);
        }
        catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }
}
