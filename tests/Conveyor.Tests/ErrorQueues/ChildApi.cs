using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>The Api as a real child process (<c>dotnet Conveyor.Api.dll</c>), so a test can kill it outright.</summary>
public sealed class ChildApi : IAsyncDisposable
{
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _output = new();
    private Uri? _baseAddress;

    private ChildApi(Process process) => _process = process;

    /// <summary>Where the process listens, on a port it picked itself (<see cref="ListeningAddress"/>): known once it is live.</summary>
    public Uri BaseAddress => _baseAddress ?? throw new InvalidOperationException("The Api process has not said where it listens yet");

    /// <summary>The last lines the process wrote, for failure messages.</summary>
    public string Output => string.Join(Environment.NewLine, _output);

    public static async Task<ChildApi> StartAsync(IReadOnlyDictionary<string, string?> settings)
    {
        var start = new ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            WorkingDirectory = AppContext.BaseDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "Conveyor.Api.dll"));
        foreach (var (key, value) in settings.Where(s => s.Value is not null))
        {
            start.ArgumentList.Add($"--{key}={value}");
        }

        foreach (var argument in ListeningAddress.Arguments(port: null))
        {
            start.ArgumentList.Add(argument);
        }

        var process = Process.Start(start) ?? throw new InvalidOperationException("Could not start the Api process.");
        var child = new ChildApi(process);
        process.OutputDataReceived += (_, line) => child.Keep(line.Data);
        process.ErrorDataReceived += (_, line) => child.Keep(line.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        await Eventually.AssertAsync(async () =>
        {
            Assert.False(process.HasExited, $"The Api process exited: {child.Output}");
            // Asked only once the process has said where it listens: whatever answered before would not be it.
            var address = Volatile.Read(ref child._baseAddress);
            Assert.True(address is not null, $"The Api process has not said where it listens: {child.Output}");
            using var response = await http.GetAsync(new Uri(address, "/health/live"));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }, TimeSpan.FromSeconds(60));
        return child;
    }

    /// <summary>Kills the process at once, as an OOM kill or a node failure would.</summary>
    public async Task KillAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        await _process.WaitForExitAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        _process.Dispose();
    }

    private void Keep(string? line)
    {
        if (line is null)
        {
            return;
        }

        if (Volatile.Read(ref _baseAddress) is null && ListeningAddress.In(line) is { } address)
        {
            Volatile.Write(ref _baseAddress, address);
        }

        _output.Enqueue(line);
        while (_output.Count > 50)
        {
            _output.TryDequeue(out _);
        }
    }
}
