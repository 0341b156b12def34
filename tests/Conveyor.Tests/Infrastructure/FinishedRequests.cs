using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// Counts the requests a host has finished: its whole pipeline has returned, the exception handler and
/// its logging included, which in .NET 10 runs after the answer is sent. Tests that assert what a request
/// logged wait here first: <c>configure: builder => builder.Services.AddSingleton&lt;IStartupFilter&gt;(finished)</c>.
/// </summary>
public sealed class FinishedRequests : IStartupFilter
{
    private int _count;

    public int Count => Volatile.Read(ref _count);

    public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
    {
        app.Use(CountAsync);
        next(app);
    };

    /// <summary>Waits (bounded) until at least <paramref name="count"/> requests have finished.</summary>
    public Task WaitForAsync(int count, TimeSpan? timeout = null) =>
        Eventually.AssertAsync(() =>
        {
            Assert.True(Count >= count, $"{Count} of {count} requests finished.");
            return Task.CompletedTask;
        }, timeout ?? TimeSpan.FromSeconds(30));

    private async Task CountAsync(HttpContext context, RequestDelegate next)
    {
        try
        {
            await next(context);
        }
        finally
        {
            Interlocked.Increment(ref _count);
        }
    }
}
