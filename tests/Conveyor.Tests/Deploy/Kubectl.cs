using System.ComponentModel;
using System.Diagnostics;

namespace Conveyor.Tests.Deploy;

/// <summary>Renders a kustomization with <c>kubectl kustomize</c> (kustomize is built into kubectl).</summary>
internal static class Kubectl
{
    private const string Missing =
        "kubectl is missing: it was not found on PATH nor at /usr/bin/kubectl or /usr/local/bin/kubectl. " +
        "The deploy tests render deploy/k8s with `kubectl kustomize` and cannot check anything without it; install kubectl.";

    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(2);

    public static string Kustomize(string directory)
    {
        var kubectl = Locate();
        if (kubectl is null)
        {
            Assert.Fail(Missing);
        }

        var start = new ProcessStartInfo(kubectl)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("kustomize");
        start.ArgumentList.Add(directory);

        Process? started = null;
        try
        {
            started = Process.Start(start);
        }
        catch (Win32Exception e)
        {
            Assert.Fail($"{Missing} ({kubectl} could not be started: {e.Message})");
        }

        using var process = started ?? throw new InvalidOperationException($"Could not start {kubectl}");
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(Timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"`kubectl kustomize {directory}` did not finish within {Timeout.TotalSeconds} s");
        }

        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            Assert.Fail($"`kubectl kustomize {directory}` failed with exit code {process.ExitCode}:\n{errors.GetAwaiter().GetResult()}");
        }

        return output.GetAwaiter().GetResult();
    }

    private static string? Locate()
    {
        var onPath = (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(directory => Path.Combine(directory, "kubectl"));
        return onPath.Concat(["/usr/bin/kubectl", "/usr/local/bin/kubectl"]).FirstOrDefault(Exists);
    }

    /// <summary>A file, or a symbolic link whose final target is one (a dangling link does not count).</summary>
    private static bool Exists(string path)
    {
        var file = new FileInfo(path);
        return file.Exists && (file.LinkTarget is null || file.ResolveLinkTarget(returnFinalTarget: true)?.Exists == true);
    }
}
