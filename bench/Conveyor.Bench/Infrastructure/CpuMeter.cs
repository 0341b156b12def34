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
    private readonly (long Postgres, long Rabbit) _servers = Servers();

    /// <summary>This process's CPU milliseconds since the start, and the machine's busy share (0–1).</summary>
    public (double ProcessMs, double MachineBusy) Read()
    {
        var process = (Process.GetCurrentProcess().TotalProcessorTime - _process).TotalMilliseconds;
        var (busy, total) = Machine();
        var share = total == _machine.Total ? double.NaN : (busy - _machine.Busy) / (double)(total - _machine.Total);
        return (process, share);
    }

    /// <summary>
    /// CPU milliseconds of every PostgreSQL process and of the RabbitMQ node (beam.smp) since the
    /// start, read from /proc (clock ticks of 10 ms). Whatever else uses the same servers meanwhile
    /// is in it too; backends that exited meanwhile are not.
    /// </summary>
    public (double PostgresMs, double RabbitMs) ReadServers()
    {
        var (postgres, rabbit) = Servers();
        const double msPerTick = 1000 / ProcStat.TicksPerSecond;
        return ((postgres - _servers.Postgres) * msPerTick, (rabbit - _servers.Rabbit) * msPerTick);
    }

    private static (long Postgres, long Rabbit) Servers()
    {
        long postgres = 0, rabbit = 0;
        if (!Directory.Exists("/proc"))
        {
            return (0, 0);
        }

        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            var pid = Path.GetFileName(directory);
            if (!char.IsAsciiDigit(pid[0]) || ProcStat.Read(pid) is not { } process)
            {
                // Not a process, or one that exited while being read.
                continue;
            }

            if (process.Command == "postgres")
            {
                postgres += process.CpuTicks;
            }
            else if (process.Command == "beam.smp")
            {
                rabbit += process.CpuTicks;
            }
        }

        return (postgres, rabbit);
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
