using System.Security.Claims;
using System.Text.Encodings.Web;
using Conveyor.Api.Hosting;
using Microsoft.AspNetCore.Authentication;
using Microsoft.Extensions.Options;
using Microsoft.Net.Http.Headers;

namespace Conveyor.Api.Security;

/// <summary>
/// Authenticates a request by the API key in <c>Authorization: Bearer &lt;key&gt;</c> or
/// <c>X-Api-Key</c>. No key: no identity (endpoints that need one answer 401). A valid key is accepted
/// whatever the client address, locked out or not. An unknown key: 401, counted against the address
/// (<see cref="AuthThrottle"/>); from an address locked out for too many of them, 429 with
/// <c>Retry-After</c> instead. The key itself is never logged or echoed, and refusals are not logged one
/// by one (the throttle logs each lockout once).
/// </summary>
public sealed class ApiKeyAuthenticationHandler(
    IOptionsMonitor<AuthenticationSchemeOptions> options,
    ILoggerFactory loggerFactory,
    UrlEncoder encoder,
    ApiKeyStore keys,
    AuthThrottle throttle)
    : AuthenticationHandler<AuthenticationSchemeOptions>(options, new WarningsOnlyLoggerFactory(loggerFactory), encoder)
{
    public const string SchemeName = "ApiKey";
    public const string ApiKeyHeader = "X-Api-Key";
    public const string ScopeClaim = "scope";

    /// <summary>
    /// The problem type of the 429 that refuses an unknown key from a locked-out address, so a client can
    /// tell it from the backpressure's 429 (which asks it to send again): this one asks for another key.
    /// The CLI knows it by this value.
    /// </summary>
    public const string LockoutProblemType = "urn:conveyor:problem:unknown-key-lockout";

    private const string BearerPrefix = "Bearer ";

    private int? _retryAfterSeconds;
    private bool _countsWhenRefused;

    protected override Task<AuthenticateResult> HandleAuthenticateAsync()
    {
        var presented = PresentedKey(Request.Headers);
        if (presented is null)
        {
            return Task.FromResult(AuthenticateResult.NoResult());
        }

        // The key first: a valid one is accepted without consulting the throttle, so a locked-out address
        // (the ingress's, shared by every client behind it) never locks out a client that holds a key.
        if (presented.Length == 0 || keys.Find(presented) is not { } identity)
        {
            return Task.FromResult(Unknown(presented.Length > 0));
        }

        Claim[] claims =
        [
            new(ClaimTypes.Name, identity.Name),
            .. identity.Scopes.Select(scope => new Claim(ScopeClaim, scope)),
        ];
        var principal = new ClaimsPrincipal(new ClaimsIdentity(claims, SchemeName, ClaimTypes.Name, ClaimTypes.Role));
        return Task.FromResult(AuthenticateResult.Success(new AuthenticationTicket(principal, SchemeName)));
    }

    /// <summary>
    /// An unknown (or empty) key: from a locked-out address, refused with 429 (see the challenge), neither
    /// counted again nor extending the lockout; otherwise 401, and a non-empty key counts toward a lockout
    /// when the challenge refuses it. Authentication runs for every request, open endpoints included
    /// (health, metrics, the OpenAPI document), and those refuse nothing: a monitor polling them with a
    /// stale key would otherwise lock its address out of the API.
    /// </summary>
    private AuthenticateResult Unknown(bool counts)
    {
        var address = Context.Connection.RemoteIpAddress;
        if (throttle.RetryAfterSeconds(AuthThrottleKind.ApiKey, address) is { } seconds)
        {
            _retryAfterSeconds = seconds;
            return AuthenticateResult.Fail("Too many unknown API keys from this address.");
        }

        _countsWhenRefused = counts;
        return AuthenticateResult.Fail("Unknown API key.");
    }

    protected override async Task HandleChallengeAsync(AuthenticationProperties properties)
    {
        // Authenticate ran on this handler for this request (the challenge follows it), so the refusal is known.
        await HandleAuthenticateOnceSafeAsync();
        if (_retryAfterSeconds is { } seconds)
        {
            throttle.Throttled(AuthThrottleKind.ApiKey);
            Response.StatusCode = StatusCodes.Status429TooManyRequests;
            RetryAfterResponses.Set(Response, seconds);
            await Context.RequestServices.GetRequiredService<IProblemDetailsService>().TryWriteAsync(new ProblemDetailsContext
            {
                HttpContext = Context,
                ProblemDetails =
                {
                    Status = StatusCodes.Status429TooManyRequests,
                    Type = LockoutProblemType,
                    Title = "Too many unknown API keys",
                    Detail = "This address sent too many unknown API keys, so an unknown key is refused until the lockout ends. "
                        + "A valid key is accepted all along: check the key.",
                },
            });
            return;
        }

        if (_countsWhenRefused)
        {
            _countsWhenRefused = false;
            throttle.Failed(AuthThrottleKind.ApiKey, Context.Connection.RemoteIpAddress);
        }

        Response.Headers.WWWAuthenticate = "Bearer";
        await base.HandleChallengeAsync(properties);
    }

    /// <summary>True when the request has an <c>Authorization</c> header of the Bearer scheme, ours or not.</summary>
    public static bool HasBearer(IHeaderDictionary headers) =>
        headers.TryGetValue(HeaderNames.Authorization, out var authorization)
        && authorization.Any(value => value is not null && IsBearer(value));

    private static bool IsBearer(string value) =>
        value.StartsWith(BearerPrefix, StringComparison.OrdinalIgnoreCase) || value.Trim().Equals(BearerPrefix.Trim(), StringComparison.OrdinalIgnoreCase);

    /// <summary>
    /// The key from either header; empty when a header is present but carries none, or when both
    /// headers are given and do not carry the same key (which one counts would be a guess, and a proxy
    /// or a log could read the other); null when neither is. An Authorization header of another scheme only (a
    /// proxy's Basic, say) is not ours and is left alone.
    /// </summary>
    private static string? PresentedKey(IHeaderDictionary headers)
    {
        var bearer = HasBearer(headers)
            ? headers[HeaderNames.Authorization] is { Count: 1 } authorization && authorization[0]!.StartsWith(BearerPrefix, StringComparison.OrdinalIgnoreCase)
                ? authorization[0]![BearerPrefix.Length..].Trim()
                : ""
            : null;
        if (headers.TryGetValue(ApiKeyHeader, out var apiKey))
        {
            var key = apiKey.Count == 1 ? apiKey[0]!.Trim() : "";
            // A Bearer header that cannot be read as one key (given twice, among other schemes, or empty)
            // may hold another key: refused as well, not passed over for this one.
            return bearer is not null && !string.Equals(bearer, key, StringComparison.Ordinal) ? "" : key;
        }

        return bearer;
    }

    /// <summary>
    /// The base class's logger. It logs every unknown key ("ApiKey was not authenticated") and every
    /// challenge at Information, so anonymous clients could write log lines at request rate (twice each),
    /// whatever the log level of this category says elsewhere; ADR 0003 promises refusals are not logged
    /// one by one. Its warnings and errors still get through.
    /// </summary>
    private sealed class WarningsOnlyLoggerFactory(ILoggerFactory inner) : ILoggerFactory
    {
        public ILogger CreateLogger(string categoryName) => new WarningsOnlyLogger(inner.CreateLogger(categoryName));

        public void AddProvider(ILoggerProvider provider) => inner.AddProvider(provider);

        // The host owns the factory it wraps.
        public void Dispose()
        {
        }

        private sealed class WarningsOnlyLogger(ILogger inner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state)
                where TState : notnull => inner.BeginScope(state);

            public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Warning && inner.IsEnabled(logLevel);

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                if (IsEnabled(logLevel))
                {
                    inner.Log(logLevel, eventId, state, exception, formatter);
                }
            }
        }
    }
}
