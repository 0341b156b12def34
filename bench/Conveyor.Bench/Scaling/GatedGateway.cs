using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Conveyor.Bench.Scaling;

/// <summary>
/// A payment gateway on a loopback port that answers <c>POST /charges</c> after <see cref="Latency"/>
/// (none by default), unless its gate is closed: then every request waits until <see cref="Open"/>, so all worker processes can be loaded
/// with a full pipeline before the clock starts. It counts requests per Idempotency-Key (exactly
/// once?) and per caller (the bearer token each worker process sends as <c>PaymentGateway:ApiKey</c>).
/// </summary>
public sealed class GatedGateway : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<string, int> _byKey = new();
    private readonly ConcurrentDictionary<string, int> _byCaller = new();
    private TaskCompletionSource _gate = OpenGate();

    private GatedGateway(WebApplication app) => _app = app;

    public Uri BaseAddress { get; private set; } = null!;

    /// <summary>How long each charge takes once through the gate (a remote gateway's answer time).</summary>
    public TimeSpan Latency { get; set; }

    public int Requests => _byKey.Values.Sum();

    /// <summary>Requests per Idempotency-Key since the last <see cref="Reset"/>.</summary>
    public IReadOnlyDictionary<string, int> ByKey => _byKey;

    /// <summary>Requests per caller (the bearer token) since the last <see cref="Reset"/>.</summary>
    public IReadOnlyDictionary<string, int> ByCaller => _byCaller;

    public static async Task<GatedGateway> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        var gateway = new GatedGateway(app);
        app.MapPost("/charges", (Func<HttpContext, Task<IResult>>)gateway.ChargeAsync);
        await app.StartAsync();
        gateway.BaseAddress = new Uri(app.Services.GetRequiredService<IServer>().Features
            .Get<IServerAddressesFeature>()!.Addresses.First());
        return gateway;
    }

    /// <summary>From now on requests wait for <see cref="Open"/>.</summary>
    public void Close() => Volatile.Write(ref _gate, new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously));

    /// <summary>Releases the waiting requests and lets every later one through.</summary>
    public void Open() => Volatile.Read(ref _gate).TrySetResult();

    public void Reset()
    {
        _byKey.Clear();
        _byCaller.Clear();
    }

    private async Task<IResult> ChargeAsync(HttpContext context)
    {
        await Volatile.Read(ref _gate).Task;
        if (Latency > TimeSpan.Zero)
        {
            await Task.Delay(Latency);
        }

        var key = context.Request.Headers["Idempotency-Key"].ToString();
        var caller = context.Request.Headers.Authorization.ToString().Replace("Bearer ", "", StringComparison.Ordinal);
        _byKey.AddOrUpdate(key, 1, (_, n) => n + 1);
        _byCaller.AddOrUpdate(caller, 1, (_, n) => n + 1);
        return Results.Ok(new { id = $"ch_{key}" });
    }

    private static TaskCompletionSource OpenGate()
    {
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        gate.SetResult();
        return gate;
    }

    public async ValueTask DisposeAsync()
    {
        Open();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
