using System.Diagnostics;
using System.Globalization;

namespace Conveyor.Bench.Infrastructure;

/// <summary>
/// CPU spent by this process and by the whole machine between two points, to tell a variant that
/// costs more CPU per message from one that waits, and a busy machine from a quiet one.
/// </summary>
public sealed class CpuMeter
{
    private readonly TimeSpan _process = Process.GetCurrentProcess().TotalProcessorTime;
    private readonly (long Busy, long Total) _machine = Machine();

    /// <summary>This process's CPU milliseconds since the start, and the machine's busy share (0–1).</summary>
    public (double ProcessMs, double MachineBusy) Read()
    {
        var process = (Process.GetCurrentProcess().TotalProcessorTime - _process).TotalMilliseconds;
        var (busy, total) = Machine();
        var share = total == _machine.Total ? double.NaN : (busy - _machine.Busy) / (double)(total - _machine.Total);
        return (process, share);
    }

    private static (long Busy, long Total) Machine()
    {
        if (!File.Exists("/proc/stat"))
        {
            return (0, 0);
        }

        // cpu  user nice system idle iowait irq softirq steal ...
        var fields = File.ReadLines("/proc/stat").First().Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Skip(1).Select(f => long.Parse(f, CultureInfo.InvariantCulture)).ToArray();
        var total = fields.Take(8).Sum();
        var idle = fields[3] + fields[4];
        return (total - idle, total);
    }
}
