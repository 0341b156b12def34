using System.Diagnostics;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// A child process (a worker or an Api run as its own OS process) with the last lines it wrote, stdout
/// and stderr, kept for a failure message. Shared with the benchmarks (bench/Conveyor.Bench links it).
/// </summary>
public sealed class OutputTail
{
    private readonly Queue<string> _lines = new();
    private readonly int _keptLines;
    private readonly Func<string, bool>? _watch;
    private string? _watched;

    private OutputTail(int keptLines, Func<string, bool>? watch)
    {
        _keptLines = keptLines;
        _watch = watch;
    }

    /// <summary>The first line written that the watch given to <see cref="Start"/> picked out, however many followed it; null until then.</summary>
    public string? Watched => Volatile.Read(ref _watched);

    /// <summary>The last lines written so far.</summary>
    public string Text
    {
        get
        {
            lock (_lines)
            {
                return string.Join(Environment.NewLine, _lines);
            }
        }
    }

    /// <summary>Starts <paramref name="start"/> with its output read into a new tail of <paramref name="keptLines"/> lines.</summary>
    /// <param name="watch">Picks out the line to keep as <see cref="Watched"/>; none when null.</param>
    public static (Process Process, OutputTail Output) Start(ProcessStartInfo start, int keptLines, Func<string, bool>? watch = null)
    {
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        var process = Process.Start(start) ?? throw new InvalidOperationException($"{start.FileName} did not start");
        var tail = new OutputTail(keptLines, watch);
        process.OutputDataReceived += (_, line) => tail.Keep(line.Data);
        process.ErrorDataReceived += (_, line) => tail.Keep(line.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return (process, tail);
    }

    private void Keep(string? line)
    {
        if (line is null)
        {
            return;
        }

        if (_watched is null && _watch?.Invoke(line) == true)
        {
            Interlocked.CompareExchange(ref _watched, line, null);
        }

        lock (_lines)
        {
            _lines.Enqueue(line);
            while (_lines.Count > _keptLines)
            {
                _lines.Dequeue();
            }
        }
    }
}
