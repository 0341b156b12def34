using System.Diagnostics;
using System.Runtime;

namespace Conveyor.Bench.Consume;

/// <summary>
/// The consume benchmark measures the worker's pipeline, so it runs in a child process with the
/// runtime settings the worker ships with (<c>src/Worker</c> csproj: workstation GC, no
/// profile-guided tier-1 code). This process keeps server GC for the benchmarks that host the Api,
/// which ships with the Web SDK's defaults. The baselines run in the same child, with the same settings.
/// </summary>
public static class WorkerRuntime
{
    private const string Marker = "CONVEYOR_BENCH_WORKER_RUNTIME";

    private static readonly Dictionary<string, string> Settings = new()
    {
        ["DOTNET_gcServer"] = "0",
        ["DOTNET_TieredPGO"] = "0",
    };

    /// <summary>True in the child started by <see cref="RunAsync"/>.</summary>
    public static bool InChild => Environment.GetEnvironmentVariable(Marker) == "1";

    /// <summary>What the report says about the process the variants ran in.</summary>
    public static string Description
    {
        get
        {
            var pgoOff = Environment.GetEnvironmentVariable("DOTNET_TieredPGO") == "0";
            return $"The benchmark process (all variants) ran with {(GCSettings.IsServerGC ? "server" : "workstation")} GC and TieredPGO {(pgoOff ? "off" : "on")}"
                + (!GCSettings.IsServerGC && pgoOff ? ", as the worker ships (src/Worker csproj)" : ", not as the worker ships");
        }
    }

    /// <summary>Runs <paramref name="command"/> with <paramref name="optionArgs"/> in a child with the worker's settings.</summary>
    public static async Task<int> RunAsync(string command, IEnumerable<string> optionArgs)
    {
        var start = new ProcessStartInfo("dotnet") { UseShellExecute = false };
        start.ArgumentList.Add(typeof(WorkerRuntime).Assembly.Location);
        start.ArgumentList.Add(command);
        foreach (var arg in optionArgs)
        {
            start.ArgumentList.Add(arg);
        }

        foreach (var (name, value) in Settings)
        {
            start.Environment[name] = value;
        }

        start.Environment[Marker] = "1";
        using var child = Process.Start(start) ?? throw new InvalidOperationException("could not start the consume benchmark's process");
        await child.WaitForExitAsync();
        return child.ExitCode;
    }
}
