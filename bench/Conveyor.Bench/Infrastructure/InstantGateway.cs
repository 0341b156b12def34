using Conveyor.Tests.Fakes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Bench.Infrastructure;

/// <summary>
/// A payment gateway on a loopback port that answers <c>POST /charges</c> at once with a charge id
/// derived from the Idempotency-Key: the "trivial work" every consume variant does.
/// </summary>
public sealed class InstantGateway : IAsyncDisposable
{
    // Set once by StartAsync: the host's endpoint counts on this gateway, so the gateway comes first.
    private LoopbackWebHost _host = null!;
    private long _requests;

    private InstantGateway()
    {
    }

    public Uri BaseAddress => _host.BaseAddress;

    public long Requests => Interlocked.Read(ref _requests);

    public static async Task<InstantGateway> StartAsync()
    {
        var gateway = new InstantGateway();
        gateway._host = await LoopbackWebHost.StartAsync(app => app.MapPost("/charges", (HttpContext context) =>
        {
            Interlocked.Increment(ref gateway._requests);
            return Results.Ok(new { id = $"ch_{context.Request.Headers["Idempotency-Key"]}" });
        }));
        return gateway;
    }

    public ValueTask DisposeAsync() => _host.DisposeAsync();
}
