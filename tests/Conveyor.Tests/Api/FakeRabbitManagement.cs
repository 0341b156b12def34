using System.Collections.Concurrent;
using Conveyor.Tests.Fakes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Tests.Api;

/// <summary>
/// Stands in for RabbitMQ's management API where a test needs a resource alarm, which cannot be
/// raised on the shared broker without blocking every other publisher on it, or the API published
/// under a path (an ingress's <c>/rabbitmq/api/...</c>).
/// </summary>
internal sealed class FakeRabbitManagement : IAsyncDisposable
{
    private readonly ConcurrentQueue<string> _requestPaths = new();
    private LoopbackWebHost _host = null!;

    private FakeRabbitManagement()
    {
    }

    public int Port => _host.BaseAddress.Port;

    public bool MemoryAlarm { get; set; }

    /// <summary>
    /// Whether <c>GET /api/nodes</c> answers 401 as RabbitMQ does to a user without the <c>monitoring</c>
    /// tag (one with <c>management</c> still lists the vhost's queues).
    /// </summary>
    public bool NodesRefused { get; set; }

    /// <summary>What <c>GET /api/queues/{vhost}</c> lists, as the management API's JSON objects.</summary>
    public IReadOnlyList<Dictionary<string, object>> Queues { get; set; } = [];

    /// <summary>When set, what <c>GET /api/queues/{vhost}</c> answers (200, JSON) instead of <see cref="Queues"/>.</summary>
    public string? QueuesAnswer { get; set; }

    /// <summary>The path of every request it got, answered or not.</summary>
    public IReadOnlyCollection<string> RequestPaths => _requestPaths;

    /// <param name="pathPrefix">Where the API is published (<c>/rabbitmq</c>): it answers under <c>{pathPrefix}/api/</c> only.</param>
    public static async Task<FakeRabbitManagement> StartAsync(string pathPrefix = "")
    {
        var fake = new FakeRabbitManagement();
        fake._host = await LoopbackWebHost.StartAsync(app =>
        {
            app.Use((context, next) =>
            {
                fake._requestPaths.Enqueue(context.Request.Path.Value ?? "");
                return next(context);
            });
            app.MapGet($"{pathPrefix}/api/nodes", () => fake.NodesRefused
                ? Results.Json(new { error = "not_authorised", reason = "Not monitor user" }, statusCode: StatusCodes.Status401Unauthorized)
                : Results.Json(new[]
                {
                    new Dictionary<string, object> { ["name"] = "rabbit@a", ["mem_alarm"] = fake.MemoryAlarm, ["disk_free_alarm"] = false },
                    new Dictionary<string, object> { ["name"] = "rabbit@b", ["mem_alarm"] = false, ["disk_free_alarm"] = false },
                }));
            app.MapGet($"{pathPrefix}/api/queues/{{vhost}}", () => fake.QueuesAnswer is { } answer
                ? Results.Text(answer, "application/json")
                : Results.Json(fake.Queues));
        });
        return fake;
    }

    public ValueTask DisposeAsync() => _host.DisposeAsync();
}
