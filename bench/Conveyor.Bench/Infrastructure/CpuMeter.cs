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
        return ((postgres - _servers.Postgres) * 10.0, (rabbit - _servers.Rabbit) * 10.0);
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
            if (!char.IsAsciiDigit(Path.GetFileName(directory)[0]))
            {
                continue;
            }

            try
            {
                // pid (comm) state ppid ... field 14 utime, 15 stime (1-based, counted after the comm).
                var stat = File.ReadAllText(Path.Combine(directory, "stat"));
                var open = stat.IndexOf('(', StringComparison.Ordinal);
                var close = stat.LastIndexOf(')');
                var comm = stat[(open + 1)..close];
                var fields = stat[(close + 2)..].Split(' ');
                var ticks = long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
                if (comm == "postgres")
                {
                    postgres += ticks;
                }
                else if (comm == "beam.smp")
                {
                    rabbit += ticks;
                }
            }
            catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or FormatException)
            {
                // The process exited while being read.
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
