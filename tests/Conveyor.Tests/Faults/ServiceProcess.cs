using System.Diagnostics;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Faults;

/// <summary>
/// A worker or an Api as its own OS process (<c>dotnet src/&lt;Worker|Api&gt;/bin/&lt;configuration&gt;/net10.0/Conveyor.&lt;Worker|Api&gt;.dll</c>),
/// configured by command-line arguments, so a fault test can kill -9 it like a crashing pod.
/// </summary>
public sealed class ServiceProcess : IAsyncDisposable
{
    private const int KeptLines = 200;
    private readonly Process _process;
    private readonly OutputTail _output;
    private readonly string _name;
    private Uri? _baseAddress;

    private ServiceProcess(Process process, OutputTail output, string name)
    {
        _process = process;
        _output = output;
        _name = name;
    }

    /// <summary>Where the process listens: known once it is ready.</summary>
    public Uri BaseAddress => _baseAddress ?? throw new InvalidOperationException($"The {_name} has not said where it listens yet");

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>The last lines the process wrote, for a failure message.</summary>
    public string Output => _output.Text;

    /// <summary>The assembly of <c>src/<paramref name="project"/></c> built alongside these tests (same configuration).</summary>
    private static string Dll(string project)
    {
        var configuration = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)).Parent?.Name ?? "Debug";
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Worker.sln")))
        {
            root = root.Parent;
        }

        if (root is null)
        {
            throw new InvalidOperationException($"No Worker.sln above {AppContext.BaseDirectory}");
        }

        var dll = Path.Combine(root.FullName, "src", project, "bin", configuration, "net10.0", $"Conveyor.{project}.dll");
        return File.Exists(dll) ? dll : throw new InvalidOperationException($"{dll} is missing: build the solution first");
    }

    /// <summary>Starts a worker with <paramref name="settings"/> as <c>--Key=Value</c> arguments and waits until it is ready.</summary>
    public static Task<ServiceProcess> StartWorkerAsync(IReadOnlyDictionary<string, string?> settings) =>
        StartAsync("Worker", settings, port: null);

    /// <summary>
    /// Starts an Api with <paramref name="settings"/> on <paramref name="port"/> (one it picks itself when
    /// null: see <see cref="ListeningAddress"/>; the same one again for a restart that its clients should find)
    /// and waits until it is ready.
    /// </summary>
    public static Task<ServiceProcess> StartApiAsync(IReadOnlyDictionary<string, string?> settings, int? port = null) =>
        StartAsync("Api", settings, port);

    private static async Task<ServiceProcess> StartAsync(string project, IReadOnlyDictionary<string, string?> settings, int? port)
    {
        var dll = Dll(project);
        var start = new ProcessStartInfo("dotnet") { WorkingDirectory = Path.GetDirectoryName(dll)! };
        start.ArgumentList.Add(dll);
        foreach (var (key, value) in settings.Where(s => s.Value is not null))
        {
            start.ArgumentList.Add($"--{key}={value}");
        }

        foreach (var argument in CallingTest.InstanceNameArgument(settings))
        {
            start.ArgumentList.Add(argument);
        }

        foreach (var argument in ListeningAddress.Arguments(port))
        {
            start.ArgumentList.Add(argument);
        }

        var (process, output) = OutputTail.Start(start, KeptLines, watch: line => ListeningAddress.In(line) is not null);
        var service = new ServiceProcess(process, output, project);
        try
        {
            await service.WaitUntilReadyAsync();
        }
        catch
        {
            // A process that was slow to get ready would otherwise outlive the test (and this test run),
            // consuming from the run's vhost.
            await service.DisposeAsync();
            throw;
        }

        return service;
    }

    /// <summary>SIGKILL: no shutdown hooks, unacked messages and open transactions are abandoned.</summary>
    public async Task KillAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill();
        }

        await _process.WaitForExitAsync();
    }

    private async Task WaitUntilReadyAsync()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while (true)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"The {_name} exited with {_process.ExitCode}:{Environment.NewLine}{Output}");
            }

            // Asked only once the process has said where it listens: whatever answered before would not be it.
            _baseAddress ??= _output.Watched is { } line ? ListeningAddress.In(line) : null;
            if (_baseAddress is { } address)
            {
                try
                {
                    using var response = await http.GetAsync(new Uri(address, "/health/ready"));
                    if (response.IsSuccessStatusCode)
                    {
                        return;
                    }
                }
                catch (Exception exception) when (HttpNoAnswer.Is(exception))
                {
                    // Not answering yet.
                }
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"The {_name} was not ready within 90 s:{Environment.NewLine}{Output}");
            }

            await Task.Delay(100);
        }
    }

    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        _process.Dispose();
    }
}
