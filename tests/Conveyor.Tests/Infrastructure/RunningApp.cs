using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Infrastructure;

/// <summary>An Api or Worker host started in this process on a free loopback port.</summary>
public sealed class RunningApp : IAsyncDisposable
{
    private readonly WebApplication _app;
    private bool _stopped;

    private RunningApp(WebApplication app, Uri baseAddress, string? apiKey)
    {
        _app = app;
        BaseAddress = baseAddress;
        Client = new HttpClient(new ProcessWide.MetricsGuard()) { BaseAddress = baseAddress, Timeout = TimeSpan.FromSeconds(60) };
        if (apiKey is not null)
        {
            // A request that sets its own X-Api-Key keeps it: default headers never override a request's.
            Client.DefaultRequestHeaders.Add("X-Api-Key", apiKey);
        }
    }

    public Uri BaseAddress { get; }

    public HttpClient Client { get; }

    public IServiceProvider Services => _app.Services;

    /// <param name="apiKey">The key <see cref="Client"/> sends; null for none (a worker).</param>
    public static async Task<RunningApp> StartAsync(Func<string[], WebApplication> build, IReadOnlyDictionary<string, string?> settings, string? apiKey = null)
    {
        var args = settings
            .Where(s => s.Value is not null)
            .Select(s => $"--{s.Key}={s.Value}")
            .Append("--urls=http://127.0.0.1:0")
            // Its broker connections carry the test's name: one left open says whose it is.
            .Concat(CallingTest.InstanceNameArgument(settings))
            .ToArray();
        var app = build(args);
        try
        {
            await app.StartAsync();
        }
        catch
        {
            // Hosted services that started before the failure (a bus among them) would otherwise run on
            // for the rest of the test run, consuming from its vhost.
            await app.DisposeAsync();
            throw;
        }

        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new RunningApp(app, new Uri(address), apiKey);
    }

    /// <summary>Polls /health/ready until the bus and database answer (bounded).</summary>
    public async Task WaitUntilReadyAsync(TimeSpan? timeout = null)
    {
        await Eventually.AssertAsync(async () =>
        {
            using var response = await Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
            Assert.True(response.IsSuccessStatusCode, $"ready answered {(int)response.StatusCode}");
        }, timeout ?? TimeSpan.FromSeconds(60));
    }

    /// <summary>A graceful stop, as on SIGTERM.</summary>
    public async Task StopAsync()
    {
        if (_stopped)
        {
            return;
        }

        _stopped = true;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await _app.StopAsync(cts.Token);
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        Client.Dispose();
        await _app.DisposeAsync();
    }
}
