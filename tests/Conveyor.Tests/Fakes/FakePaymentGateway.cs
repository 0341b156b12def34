using System.Collections.Concurrent;
using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Conveyor.Tests.Fakes;

/// <summary>
/// A payment gateway on a loopback port that behaves like a real one: <c>POST /charges</c> with an
/// <c>Idempotency-Key</c> charges once per key and answers repeats with the first charge (a decline
/// with the decline), and refuses a key reused with other parameters. It counts everything, can be
/// slowed down, and can be told to fail or to decline.
/// </summary>
/// <remarks>
/// Because it charges once per key, <see cref="Charges"/> can never show a payment run twice. What
/// shows it is the number of requests: <see cref="RequestsFor"/> (every request) and
/// <see cref="SuccessfulRequestsFor"/> (requests answered with the charge).
/// </remarks>
public sealed class FakePaymentGateway : IAsyncDisposable
{
    private readonly ConcurrentDictionary<string, Charge> _charges = new();
    private readonly ConcurrentDictionary<string, int> _requests = new();
    private readonly ConcurrentDictionary<string, int> _successes = new();
    private readonly ConcurrentQueue<HttpStatusCode> _scriptedFailures = new();
    private readonly ConcurrentQueue<bool> _scriptedDeclines = new();
    private readonly ConcurrentDictionary<string, Charged> _declined = new();
    private readonly ConcurrentDictionary<string, int> _reusedKeys = new();
    private readonly ConcurrentDictionary<string, byte> _inProgress = new();
    private readonly ConcurrentDictionary<string, int> _inProgressConflicts = new();
    private readonly ConcurrentQueue<UnreadableAnswer> _unreadableAnswers = new();
    private LoopbackWebHost _host = null!;

    private FakePaymentGateway()
    {
    }

    public Uri BaseAddress => _host.BaseAddress;

    /// <summary>Delay before each answer, to make concurrent deliveries overlap.</summary>
    public TimeSpan Latency { get; set; }

    /// <summary>Called on every request, before it is answered.</summary>
    public Action? OnRequest { get; set; }

    /// <summary>When set, every request is answered with this status.</summary>
    public HttpStatusCode? FailEverythingWith { get; set; }

    /// <summary>When set, every failure answered carries a <c>Retry-After</c> header of this many whole seconds.</summary>
    public TimeSpan? RetryAfter { get; set; }

    /// <summary>
    /// When set, a request that would make a new charge waits for this task before it charges and answers
    /// (a charge the gateway is still working on, whether or not its caller still waits), and a request
    /// with the same key meanwhile is answered 409, as Stripe answers a key whose request is in progress.
    /// </summary>
    public Task? HoldNewCharges { get; set; }

    /// <summary>
    /// When above zero, a charge is answered with its id and a field of this many characters besides,
    /// as a misbehaving gateway or a proxy in front of it might answer.
    /// </summary>
    public int PadChargeAnswersWith { get; set; }

    /// <summary>
    /// When set, a charge is answered with its id and the <c>amountMinor</c> and <c>currency</c> this gives for it
    /// (the charge as made, or what a misbehaving gateway claims it made).
    /// </summary>
    public Func<Charge, (long AmountMinor, string Currency)>? EchoChargesAs { get; set; }

    /// <summary>
    /// The next <paramref name="count"/> charges are made but answered 200 with <paramref name="body"/>
    /// (given the charge's id) as <paramref name="contentType"/>, as a proxy in front of a gateway or a
    /// gateway in trouble might answer: an HTML page, JSON cut short. Repeats with the same key are
    /// answered normally afterwards. Such an answer does not count in <see cref="SuccessfulRequestsFor"/>.
    /// </summary>
    public void AnswerNextChargesUnreadably(int count, string contentType, Func<string, string> body)
    {
        for (var i = 0; i < count; i++)
        {
            _unreadableAnswers.Enqueue(new UnreadableAnswer(contentType, body));
        }
    }

    /// <summary>Requests with this key answered 409 because an earlier one with it was still in progress.</summary>
    public int InProgressConflictsFor(string idempotencyKey) => _inProgressConflicts.GetValueOrDefault(idempotencyKey);

    public int TotalRequests => _requests.Values.Sum();

    /// <summary>How many different idempotency keys were asked for at least once.</summary>
    public int DistinctKeysRequested => _requests.Count;

    /// <summary>One charge per Idempotency-Key that was charged, however often it was asked for.</summary>
    public IReadOnlyCollection<Charge> Charges => [.. _charges.Values];

    /// <summary>Every request with this key, refused or answered.</summary>
    public int RequestsFor(string idempotencyKey) => _requests.GetValueOrDefault(idempotencyKey);

    /// <summary>
    /// Requests with this key answered with its charge: the one that charged, and every repeat after
    /// it. More than one means the payment ran again after its charge had succeeded (the key kept the
    /// money right), which only a lost result justifies: a killed worker, a commit cut off.
    /// </summary>
    public int SuccessfulRequestsFor(string idempotencyKey) => _successes.GetValueOrDefault(idempotencyKey);

    /// <summary>The id a new charge gets; by default <c>ch_</c> and 32 hexadecimal digits.</summary>
    public Func<string> NewChargeId { get; set; } = () => $"ch_{Guid.NewGuid():N}";

    /// <summary>
    /// The next <paramref name="count"/> keys not yet answered are declined (402), and their declines kept:
    /// asked again with the same parameters the gateway declines again, with others it answers 400.
    /// </summary>
    public void DeclineNext(int count)
    {
        for (var i = 0; i < count; i++)
        {
            _scriptedDeclines.Enqueue(true);
        }
    }

    /// <summary>Requests with this key refused because it was first used with other parameters.</summary>
    public int ReusedKeyRequestsFor(string idempotencyKey) => _reusedKeys.GetValueOrDefault(idempotencyKey);

    /// <summary>The next <paramref name="count"/> requests fail with <paramref name="status"/>.</summary>
    public void FailNext(int count, HttpStatusCode status)
    {
        for (var i = 0; i < count; i++)
        {
            _scriptedFailures.Enqueue(status);
        }
    }

    public static async Task<FakePaymentGateway> StartAsync()
    {
        var gateway = new FakePaymentGateway();
        gateway._host = await LoopbackWebHost.StartAsync(app => app.MapPost("/charges", (Func<HttpContext, Task<IResult>>)gateway.HandleAsync));
        return gateway;
    }

    private async Task<IResult> HandleAsync(HttpContext context)
    {
        if (Latency > TimeSpan.Zero)
        {
            await Task.Delay(Latency);
        }

        var key = context.Request.Headers["Idempotency-Key"].ToString();
        if (string.IsNullOrEmpty(key))
        {
            return Results.BadRequest(new { error = "Idempotency-Key is required" });
        }

        _requests.AddOrUpdate(key, 1, (_, n) => n + 1);
        OnRequest?.Invoke();
        if (FailEverythingWith is { } always)
        {
            return Failure(context, always);
        }

        if (_scriptedFailures.TryDequeue(out var status))
        {
            return Failure(context, status);
        }

        if (_inProgress.ContainsKey(key))
        {
            return InProgress(key);
        }

        using var body = await JsonDocument.ParseAsync(context.Request.Body);
        var asked = new Charged(
            body.RootElement.GetProperty("accountId").GetString()!,
            body.RootElement.GetProperty("amountMinor").GetInt64(),
            body.RootElement.GetProperty("currency").GetString()!);
        // What a key was answered is kept, a decline as a charge, and a key is bound to the parameters
        // it was first used with (as Stripe does): a repeat gets the same answer, other parameters a 400.
        var kept = _declined.TryGetValue(key, out var declined) ? declined
            : _charges.TryGetValue(key, out var made) ? new Charged(made.AccountId, made.AmountMinor, made.Currency)
            : null;
        if (kept is not null && kept != asked)
        {
            _reusedKeys.AddOrUpdate(key, 1, (_, n) => n + 1);
            return Results.BadRequest(new { error = "Keys for idempotent requests can only be used with the same parameters they were first used with" });
        }

        if (declined is not null || (kept is null && _scriptedDeclines.TryDequeue(out _) && _declined.TryAdd(key, asked)))
        {
            return Results.StatusCode(StatusCodes.Status402PaymentRequired);
        }

        if (HoldNewCharges is { } hold && !_charges.ContainsKey(key))
        {
            if (!_inProgress.TryAdd(key, 0))
            {
                return InProgress(key);
            }

            try
            {
                await hold;
            }
            finally
            {
                _inProgress.TryRemove(key, out _);
            }
        }

        var charge = _charges.GetOrAdd(key, k => new Charge(
            NewChargeId(), k, asked.AccountId, asked.AmountMinor, asked.Currency, context.Request.Headers.Authorization.ToString()));
        if (_unreadableAnswers.TryDequeue(out var unreadable))
        {
            // Written as it is: a typed result would check the content type's charset.
            context.Response.StatusCode = StatusCodes.Status200OK;
            context.Response.ContentType = unreadable.ContentType;
            await context.Response.WriteAsync(unreadable.Body(charge.Id));
            return Results.Empty;
        }

        _successes.AddOrUpdate(key, 1, (_, n) => n + 1);
        if (EchoChargesAs?.Invoke(charge) is var (amountMinor, currency))
        {
            return Results.Ok(new { id = charge.Id, amountMinor, currency });
        }

        return PadChargeAnswersWith > 0
            ? Results.Ok(new { id = charge.Id, padding = new string('x', PadChargeAnswersWith) })
            : Results.Ok(new { id = charge.Id });
    }

    private IResult InProgress(string key)
    {
        _inProgressConflicts.AddOrUpdate(key, 1, (_, n) => n + 1);
        return Results.Conflict(new { error = "There is currently another in-progress request using this Idempotency-Key" });
    }

    private IResult Failure(HttpContext context, HttpStatusCode status)
    {
        if (RetryAfter is { } retryAfter)
        {
            context.Response.Headers.RetryAfter = ((int)retryAfter.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        return Results.StatusCode((int)status);
    }

    public ValueTask DisposeAsync() => _host.DisposeAsync();

    private sealed record UnreadableAnswer(string ContentType, Func<string, string> Body);

    /// <summary>What a request asked to charge.</summary>
    private sealed record Charged(string AccountId, long AmountMinor, string Currency);

    /// <summary>A charge as the gateway recorded it; <see cref="Caller"/> is the Authorization header.</summary>
    public sealed record Charge(string Id, string IdempotencyKey, string AccountId, long AmountMinor, string Currency, string Caller);
}
