using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Conveyor.Bench.Infrastructure;

/// <summary>
/// A payment gateway on a loopback port that answers <c>POST /charges</c> at once with a charge id
/// derived from the Idempotency-Key: the "trivial work" every consume variant does.
/// </summary>
public sealed class InstantGateway : IAsyncDisposable
{
    private readonly WebApplication _app;
    private long _requests;

    private InstantGateway(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    public long Requests => Interlocked.Read(ref _requests);

    public static async Task<InstantGateway> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        var gateway = new InstantGateway(app);
        app.MapPost("/charges", (HttpContext context) =>
        {
            Interlocked.Increment(ref gateway._requests);
            return Results.Ok(new { id = $"ch_{context.Request.Headers["Idempotency-Key"]}" });
        });
        await app.StartAsync();
        gateway.BaseAddress = new Uri(app.Services.GetRequiredService<IServer>().Features
            .Get<IServerAddressesFeature>()!.Addresses.First());
        return gateway;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
