using System.Text.Json;
using Xunit.Abstractions;

namespace Conveyor.Tests.Faults;

/// <summary>
/// Each scenario's line: jobs accepted, processed, lost, applied twice, charged again. Written to the test output,
/// and appended to the file named by <c>CONVEYOR_FAULTS_REPORT</c> (bench/run.sh collects it into
/// docs/benchmarks.md).
/// </summary>
public static class FaultReport
{
    private static readonly Lock FileLock = new();

    public static void Write(ITestOutputHelper output, string scenario, PaymentAudit audit, string details)
    {
        output.WriteLine($"{scenario}: accepted {audit.Accepted}, processed {audit.Processed}, lost {audit.Lost}, applied twice {audit.AppliedTwice}, charged again {audit.ChargedAgain}; {details}");
        if (Environment.GetEnvironmentVariable("CONVEYOR_FAULTS_REPORT") is not { Length: > 0 } path)
        {
            return;
        }

        var line = JsonSerializer.Serialize(new
        {
            scenario,
            measuredAt = DateTimeOffset.UtcNow,
            accepted = audit.Accepted,
            processed = audit.Processed,
            lost = audit.Lost,
            appliedTwice = audit.AppliedTwice,
            chargedAgain = audit.ChargedAgain,
            details,
        });
        lock (FileLock)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            File.AppendAllText(path, line + Environment.NewLine);
        }
    }

    /// <summary>
    /// The Api as the scenarios need it: all clients share one API key, and its per-client token
    /// bucket would refuse a load test's submissions (429) before any fault is injected.
    /// </summary>
    public static Dictionary<string, string?> ApiSettings => new() { ["RateLimiting:Enabled"] = "false" };

    /// <summary>The job count a scenario runs with: its default, or <c>CONVEYOR_FAULTS_JOBS</c>.</summary>
    public static int Jobs(int normalRun) =>
        int.TryParse(Environment.GetEnvironmentVariable("CONVEYOR_FAULTS_JOBS"), out var jobs) && jobs > 0 ? jobs : normalRun;
}
