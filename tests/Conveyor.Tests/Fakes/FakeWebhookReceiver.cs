using System.Collections.Concurrent;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Tests.Fakes;

/// <summary>A customer's webhook endpoint on a loopback port: records what arrives, can fail on demand.</summary>
public sealed class FakeWebhookReceiver : IAsyncDisposable
{
    /// <summary>What an endless body (<see cref="TrickleEndlessBodyWith"/>) repeats.</summary>
    public const string EndlessBodyChunk = "still failing... ";

    private readonly ConcurrentQueue<Received> _received = new();
    private readonly ConcurrentDictionary<string, byte[]> _bodiesByKey = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, byte> _inProgress = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int> _inProgressConflicts = new(StringComparer.Ordinal);
    private int _endlessBodiesAbandoned;
    private LoopbackWebHost _host = null!;

    private FakeWebhookReceiver()
    {
    }

    public Uri BaseAddress => _host.BaseAddress;

    /// <summary>When set, every delivery is answered with this status.</summary>
    public HttpStatusCode? AnswerWith { get; set; }

    /// <summary>When set, every delivery is answered only after this long (or when its sender gives up).</summary>
    public TimeSpan? AnswerAfter { get; set; }

    /// <summary>When set, every answer carries a <c>Retry-After</c> header of this many whole seconds.</summary>
    public TimeSpan? RetryAfter { get; set; }

    /// <summary>A text body sent with <see cref="AnswerWith"/>.</summary>
    public string? AnswerBody { get; set; }

    /// <summary>The Content-Type of <see cref="AnswerBody"/>, written as given (its bytes are UTF-8 whatever its charset says).</summary>
    public string AnswerBodyContentType { get; set; } = "text/plain; charset=utf-8";

    /// <summary>
    /// When set, every delivery is answered with this status and a body that never ends: a few bytes
    /// at a time, until the sender closes the connection.
    /// </summary>
    public HttpStatusCode? TrickleEndlessBodyWith { get; set; }

    /// <summary>
    /// How long the endless body waits after each <see cref="EndlessBodyChunk"/>: zero sends it as fast
    /// as the sender reads, <see cref="Timeout.InfiniteTimeSpan"/> sends one chunk and then stalls.
    /// </summary>
    public TimeSpan EndlessBodyPause { get; set; } = TimeSpan.FromMilliseconds(50);

    /// <summary>
    /// When true, a receiver that keeps each <c>Idempotency-Key</c> with the first body sent under it,
    /// whatever it answered (as Stripe and the IETF Idempotency-Key draft do): the key sent again with
    /// another body is answered 422.
    /// </summary>
    public bool RefusesKeyReuse { get; set; }

    /// <summary>
    /// When set, a delivery waits for this task before it is answered (a receiver still working on it,
    /// whether or not its sender still waits), and a delivery with the same <c>Idempotency-Key</c>
    /// meanwhile is answered 409, as a receiver following the IETF Idempotency-Key draft (as Stripe) does.
    /// </summary>
    public Task? HoldDeliveries { get; set; }

    /// <summary>Deliveries with this key answered 409 because an earlier one with it was still in progress.</summary>
    public int InProgressConflictsFor(string idempotencyKey) => _inProgressConflicts.GetValueOrDefault(idempotencyKey);

    /// <summary>
    /// When true, a delivery without a <c>User-Agent</c> (or with an empty one) is answered 403, as the bot
    /// protection in front of many receivers answers it.
    /// </summary>
    public bool RefusesAnEmptyUserAgent { get; set; }

    /// <summary>When true, every delivery is answered <see cref="AnswerWith"/> (else 200) with a response header larger than any client accepts.</summary>
    public bool AnswerWithOversizedHeader { get; set; }

    /// <summary>Endless bodies whose sender closed the connection (it stopped reading).</summary>
    public int EndlessBodiesAbandoned => Volatile.Read(ref _endlessBodiesAbandoned);

    public IReadOnlyCollection<Received> Deliveries => [.. _received];

    public Uri Url(string path = "/hooks") => new(BaseAddress, path);

    public static async Task<FakeWebhookReceiver> StartAsync()
    {
        var receiver = new FakeWebhookReceiver();
        receiver._host = await LoopbackWebHost.StartAsync(app => app.MapPost("/{**path}", (Func<HttpContext, Task<IResult>>)receiver.HandleAsync));
        return receiver;
    }

    private async Task<IResult> HandleAsync(HttpContext context)
    {
        using var buffer = new MemoryStream();
        await context.Request.Body.CopyToAsync(buffer);
        var headers = context.Request.Headers.ToDictionary(h => h.Key, h => h.Value.ToString(), StringComparer.OrdinalIgnoreCase);
        var body = buffer.ToArray();
        _received.Enqueue(new Received(context.Request.Path, headers, body));
        if (RefusesAnEmptyUserAgent && string.IsNullOrWhiteSpace(headers.GetValueOrDefault("User-Agent")))
        {
            return Results.StatusCode(StatusCodes.Status403Forbidden);
        }

        if (AnswerAfter is { } delay)
        {
            try
            {
                await Task.Delay(delay, context.RequestAborted);
            }
            catch (OperationCanceledException)
            {
                return Results.Empty;
            }
        }

        if (HoldDeliveries is { } hold && headers.TryGetValue("Idempotency-Key", out var heldKey))
        {
            if (!_inProgress.TryAdd(heldKey, 0))
            {
                _inProgressConflicts.AddOrUpdate(heldKey, 1, (_, n) => n + 1);
                return Results.Conflict(new { error = "There is currently another in-progress request using this Idempotency-Key" });
            }

            try
            {
                await hold;
            }
            finally
            {
                _inProgress.TryRemove(heldKey, out _);
            }
        }

        if (RefusesKeyReuse && headers.TryGetValue("Idempotency-Key", out var key)
            && !_bodiesByKey.GetOrAdd(key, body).AsSpan().SequenceEqual(body))
        {
            return Results.StatusCode(StatusCodes.Status422UnprocessableEntity);
        }

        if (RetryAfter is { } retryAfter)
        {
            context.Response.Headers.RetryAfter = ((int)retryAfter.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        if (TrickleEndlessBodyWith is { } status)
        {
            await TrickleEndlessBodyAsync(context, status);
            return Results.Empty;
        }

        if (AnswerWithOversizedHeader)
        {
            context.Response.Headers["X-Oversized"] = new string('x', 200 * 1024);
            return Results.StatusCode((int)(AnswerWith ?? HttpStatusCode.OK));
        }

        if (AnswerBody is { } text)
        {
            // Written by hand: Results.Text would encode by the charset, which may be one .NET refuses.
            context.Response.StatusCode = (int)(AnswerWith ?? HttpStatusCode.OK);
            context.Response.Headers.ContentType = AnswerBodyContentType;
            await context.Response.Body.WriteAsync(System.Text.Encoding.UTF8.GetBytes(text));
            return Results.Empty;
        }

        return Results.StatusCode((int)(AnswerWith ?? HttpStatusCode.NoContent));
    }

    private async Task TrickleEndlessBodyAsync(HttpContext context, HttpStatusCode status)
    {
        context.Response.StatusCode = (int)status;
        context.Response.ContentType = "text/plain";
        try
        {
            // Until the sender goes away; its stopping to read is what the test waits for.
            while (true)
            {
                await context.Response.WriteAsync(EndlessBodyChunk, context.RequestAborted);
                await context.Response.Body.FlushAsync(context.RequestAborted);
                await Task.Delay(EndlessBodyPause, context.RequestAborted);
            }
        }
        catch (Exception exception) when (exception is OperationCanceledException or IOException)
        {
            Interlocked.Increment(ref _endlessBodiesAbandoned);
        }
    }

    public ValueTask DisposeAsync() => _host.DisposeAsync();

    public sealed record Received(string Path, IReadOnlyDictionary<string, string> Headers, byte[] Body);
}
