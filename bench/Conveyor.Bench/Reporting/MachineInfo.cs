using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.Json;
using Conveyor.Bench.Infrastructure;

namespace Conveyor.Bench.Reporting;

/// <summary>Where and with what the numbers were measured.</summary>
public sealed record MachineInfo(
    DateTimeOffset Date,
    int Cores,
    string Cpu,
    string Memory,
    string Os,
    string Runtime,
    string Sdk,
    string Libraries,
    string Servers)
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    public static async Task SaveAsync(string repositoryRoot, BenchEnvironment environment)
    {
        var info = new MachineInfo(
            DateTimeOffset.UtcNow,
            Environment.ProcessorCount,
            ProcLine("/proc/cpuinfo", "model name") ?? RuntimeInformation.ProcessArchitecture.ToString(),
            MemTotal(),
            RuntimeInformation.OSDescription,
            RuntimeInformation.FrameworkDescription,
            await SdkVersionAsync(),
            string.Join(", ", new[]
            {
                Version("MassTransit", typeof(MassTransit.IBus)),
                Version("RabbitMQ.Client", typeof(RabbitMQ.Client.IConnection)),
                Version("Npgsql", typeof(Npgsql.NpgsqlConnection)),
                Version("EF Core", typeof(Microsoft.EntityFrameworkCore.DbContext)),
            }),
            await environment.ServerVersionsAsync());
        Directory.CreateDirectory(BenchResult.Directory(repositoryRoot));
        await File.WriteAllTextAsync(Path.Combine(BenchResult.Directory(repositoryRoot), "machine.json"), JsonSerializer.Serialize(info, Json));
    }

    public static MachineInfo? Load(string repositoryRoot)
    {
        var path = Path.Combine(BenchResult.Directory(repositoryRoot), "machine.json");
        return File.Exists(path) ? JsonSerializer.Deserialize<MachineInfo>(File.ReadAllText(path), Json) : null;
    }

    private static string Version(string name, Type type)
    {
        var version = type.Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            ?? type.Assembly.GetName().Version?.ToString() ?? "?";
        return $"{name} {version.Split('+')[0]}";
    }

    private static string? ProcLine(string path, string key) =>
        File.Exists(path)
            ? File.ReadLines(path).FirstOrDefault(l => l.StartsWith(key, StringComparison.Ordinal))?.Split(':', 2)[1].Trim()
            : null;

    private static string MemTotal()
    {
        var kilobytes = ProcLine("/proc/meminfo", "MemTotal")?.Split(' ')[0];
        return long.TryParse(kilobytes, out var kb) ? $"{kb / 1024.0 / 1024.0:0.0} GiB" : "?";
    }

    private static async Task<string> SdkVersionAsync()
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo("dotnet", "--version") { RedirectStandardOutput = true, UseShellExecute = false });
            if (process is null)
            {
                return "?";
            }

            var output = await process.StandardOutput.ReadToEndAsync();
            await process.WaitForExitAsync();
            return output.Trim();
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "?";
        }
    }
}
