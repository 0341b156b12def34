using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Fakes;

/// <summary>
/// A minimal Kestrel host on a free loopback port, answering with the routes its caller maps: what
/// the fake servers (a webhook receiver, a payment gateway, ...) stand on. Shared with the benchmarks' fake
/// gateways (bench/Conveyor.Bench links it).
/// </summary>
internal sealed class LoopbackWebHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private LoopbackWebHost(WebApplication app, Uri baseAddress)
    {
        _app = app;
        BaseAddress = baseAddress;
    }

    /// <summary>Where it listens, <c>http://127.0.0.1:{port}/</c>.</summary>
    public Uri BaseAddress { get; }

    /// <param name="mapRoutes">Maps the routes (or middleware) it answers with, before it starts.</param>
    public static async Task<LoopbackWebHost> StartAsync(Action<WebApplication> mapRoutes)
    {
        var builder = WebApplication.CreateSlimBuilder();
        // A fake's request logs would only bury the output of the code under test.
        builder.Logging.ClearProviders();
        // Port 0: the system picks a free one, so fakes in tests running side by side never collide.
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        mapRoutes(app);
        await app.StartAsync();
        var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new LoopbackWebHost(app, new Uri(address));
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
