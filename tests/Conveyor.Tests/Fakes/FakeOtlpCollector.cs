using System.Collections.Concurrent;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Tests.Fakes;

/// <summary>An OTLP/HTTP collector on a loopback port: accepts every export and records the path it was posted to.</summary>
public sealed class FakeOtlpCollector : IAsyncDisposable
{
    private readonly ConcurrentQueue<string> _paths = new();
    private LoopbackWebHost _host = null!;

    private FakeOtlpCollector()
    {
    }

    public Uri BaseAddress => _host.BaseAddress;

    /// <summary>The paths exports were posted to, in arrival order.</summary>
    public IReadOnlyList<string> Paths => [.. _paths];

    public static async Task<FakeOtlpCollector> StartAsync()
    {
        var collector = new FakeOtlpCollector();
        collector._host = await LoopbackWebHost.StartAsync(app => app.MapPost("/{**path}", async (HttpContext context) =>
        {
            await context.Request.Body.CopyToAsync(Stream.Null);
            collector._paths.Enqueue(context.Request.Path.Value ?? "");
            return Results.Bytes([], "application/x-protobuf");
        }));
        return collector;
    }

    /// <summary>The absolute URL of <paramref name="path"/> on this collector.</summary>
    public string Url(string path) => new Uri(BaseAddress, path).ToString();

    public ValueTask DisposeAsync() => _host.DisposeAsync();
}
