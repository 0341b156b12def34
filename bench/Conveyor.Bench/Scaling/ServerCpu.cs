using System.Globalization;

namespace Conveyor.Bench.Scaling;

/// <summary>
/// CPU time of the broker and database processes (by command name, read from /proc), to show where a
/// run's cores went. Every process of that name counts, whoever started it: on a shared machine that
/// includes other users' PostgreSQL sessions.
/// </summary>
public sealed class ServerCpu
{
    /// <summary>Linux's USER_HZ: /proc/&lt;pid&gt;/stat counts CPU in these ticks.</summary>
    private const double TicksPerSecond = 100;

    private static readonly string[] Names = ["postgres", "beam.smp"];
    private readonly Dictionary<int, (string Name, long Ticks)> _start = Snapshot();

    /// <summary>CPU seconds per command name since this instance was created.</summary>
    public IReadOnlyDictionary<string, double> Read()
    {
        var seconds = Names.ToDictionary(n => n, _ => 0.0);
        foreach (var (pid, (name, ticks)) in Snapshot())
        {
            // A process that started after the first snapshot spent all its ticks inside the window.
            var before = _start.TryGetValue(pid, out var start) && start.Name == name ? start.Ticks : 0;
            seconds[name] += Math.Max(0, ticks - before) / TicksPerSecond;
        }

        return seconds;
    }

    public static double Postgres(IReadOnlyDictionary<string, double> seconds) => seconds.GetValueOrDefault("postgres");

    public static double RabbitMq(IReadOnlyDictionary<string, double> seconds) => seconds.GetValueOrDefault("beam.smp");

    private static Dictionary<int, (string Name, long Ticks)> Snapshot()
    {
        var processes = new Dictionary<int, (string, long)>();
        if (!Directory.Exists("/proc"))
        {
            return processes;
        }

        foreach (var directory in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(directory), out var pid))
            {
                continue;
            }

            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(directory, "stat"));
            }
            catch (IOException)
            {
                continue; // Exited meanwhile.
            }
            catch (UnauthorizedAccessException)
            {
                continue;
            }

            // pid (comm) state ppid ... utime(14) stime(15); comm may hold spaces, so split after ')'.
            var open = stat.IndexOf('(', StringComparison.Ordinal);
            var close = stat.LastIndexOf(')');
            if (open < 0 || close < open)
            {
                continue;
            }

            var name = stat[(open + 1)..close];
            if (!Names.Contains(name))
            {
                continue;
            }

            var fields = stat[(close + 2)..].Split(' ');
            processes[pid] = (name, long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture));
        }

        return processes;
    }
}
