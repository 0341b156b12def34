using System.Diagnostics;
using Conveyor.Bench.Infrastructure;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Bench.Scaling;

/// <summary>
/// The Release worker as its own OS process (<c>dotnet src/Worker/bin/Release/net10.0/Conveyor.Worker.dll</c>),
/// configured by <c>--Key=Value</c> arguments like a pod by its environment; stopped with SIGKILL
/// once its work is verified (nothing is in flight by then).
/// </summary>
public sealed class WorkerProcess : IAsyncDisposable
{
    private const int KeptLines = 50;
    private readonly Process _process;
    private readonly OutputTail _output;

    private WorkerProcess(string name, Process process, OutputTail output)
    {
        Name = name;
        _process = process;
        _output = output;
    }

    public string Name { get; }

    public bool HasExited => _process.HasExited;

    /// <summary>User + system CPU time the process has used so far.</summary>
    public TimeSpan Cpu
    {
        get
        {
            _process.Refresh();
            return _process.HasExited ? TimeSpan.Zero : _process.TotalProcessorTime;
        }
    }

    /// <summary>The last lines the worker wrote, for a failure message.</summary>
    public string Output => _output.Text;

    public static string Dll(string repositoryRoot)
    {
        var dll = Path.Combine(repositoryRoot, "src", "Worker", "bin", "Release", "net10.0", "Conveyor.Worker.dll");
        return File.Exists(dll) ? dll : throw new InvalidOperationException($"{dll} is missing: build Release first (bench/run.sh does).");
    }

    public static WorkerProcess Start(string dll, string name, IReadOnlyDictionary<string, string?> settings)
    {
        var start = new ProcessStartInfo("dotnet") { WorkingDirectory = Path.GetDirectoryName(dll)! };
        start.ArgumentList.Add(dll);
        foreach (var argument in BenchEnvironment.Args(settings))
        {
            start.ArgumentList.Add(argument);
        }

        var (process, output) = OutputTail.Start(start, KeptLines);
        return new WorkerProcess(name, process, output);
    }

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
        }

        await _process.WaitForExitAsync();
        _process.Dispose();
    }
}
