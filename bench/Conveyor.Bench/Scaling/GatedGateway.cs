using System.Collections.Concurrent;
using Conveyor.Tests.Fakes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Bench.Scaling;

/// <summary>
/// A payment gateway on a loopback port that answers <c>POST /charges</c> after <see cref="Latency"/>
/// (none by default), unless its gate is closed: then every request waits until <see cref="Open"/>, so all worker processes can be loaded
/// with a full pipeline before the clock starts. It counts requests per Idempotency-Key (exactly
/// once?) and per caller (the bearer token each worker process sends as <c>PaymentGateway:ApiKey</c>).
/// </summary>
public sealed class GatedGateway : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, int> _byKey = new();
    private readonly ConcurrentDictionary<string, int> _byCaller = new();
    private TaskCompletionSource _gate = OpenGate();

    // Set once by StartAsync: the host's endpoint is this gateway's ChargeAsync, so the gateway comes first.
    private LoopbackWebHost _host = null!;

    private GatedGateway()
    {
    }

    public Uri BaseAddress => _host.BaseAddress;

    /// <summary>How long each charge takes once through the gate (a remote gateway's answer time).</summary>
    public TimeSpan Latency { get; set; }

    public int Requests => _byKey.Values.Sum();

    /// <summary>Requests per Idempotency-Key since the last <see cref="Reset"/>.</summary>
    public IReadOnlyDictionary<string, int> ByKey => _byKey;

    /// <summary>Requests per caller (the bearer token) since the last <see cref="Reset"/>.</summary>
    public IReadOnlyDictionary<string, int> ByCaller => _byCaller;

    public static async Task<GatedGateway> StartAsync()
    {
        var gateway = new GatedGateway();
        gateway._host = await LoopbackWebHost.StartAsync(app => app.MapPost("/charges", (Func<HttpContext, Task<IResult>>)gateway.ChargeAsync));
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
        await _host.DisposeAsync();
    }
}
