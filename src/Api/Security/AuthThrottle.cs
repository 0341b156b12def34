using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Security;

/// <summary>What was being authenticated: the dashboard's sign-in form or a key header.</summary>
public enum AuthThrottleKind
{
    SignIn,
    ApiKey,
}

/// <summary>
/// Throttles guessing of API keys, per client address and per kind: once an address has failed
/// <see cref="AuthThrottleLimits.MaxFailures"/> times within the window, every key it presents is refused
/// with 429 and <c>Retry-After</c>, valid or not and without being checked, until the lockout ends
/// (a valid key would otherwise tell the guesser it had won). Each lockout is logged once and counted in
/// <c>conveyor.api.auth.lockouts</c>; each refused request in <c>conveyor.api.auth.throttled</c>. State
/// is per replica: with N replicas behind a balancer an address gets up to N times the limit.
/// </summary>
public sealed class AuthThrottle
{
    public const string ThrottledInstrumentName = "conveyor.api.auth.throttled";
    public const string LockoutsInstrumentName = "conveyor.api.auth.lockouts";

    private readonly FailureTable? _signIn;
    private readonly FailureTable? _apiKeys;
    private readonly Counter<long> _throttled;
    private readonly Counter<long> _lockouts;
    private readonly ILogger<AuthThrottle> _logger;

    public AuthThrottle(IOptions<AuthThrottlingOptions> options, TimeProvider clock, IMeterFactory meters, ILogger<AuthThrottle> logger)
    {
        var settings = options.Value;
        if (settings.Enabled)
        {
            _signIn = new FailureTable(settings.SignIn, settings.MaxEntries, clock);
            _apiKeys = new FailureTable(settings.ApiKeys, settings.MaxEntries, clock);
        }

        var meter = meters.Create(ApiApp.ApiMeterName);
        _throttled = meter.CreateCounter<long>(ThrottledInstrumentName, unit: "{request}",
            description: "Authentication attempts refused unchecked because the client address is locked out (kind=signin|apikey)");
        _lockouts = meter.CreateCounter<long>(LockoutsInstrumentName, unit: "{lockout}",
            description: "Client addresses locked out after too many failed authentications (kind=signin|apikey)");
        _logger = logger;
    }

    /// <summary>Addresses remembered for <paramref name="kind"/> (for tests and diagnostics).</summary>
    public int Tracked(AuthThrottleKind kind) => Table(kind)?.Count ?? 0;

    /// <summary>
    /// Null when <paramref name="address"/> may try; otherwise the whole seconds until it may (at least 1),
    /// and the refusal is counted.
    /// </summary>
    public int? RetryAfterSeconds(AuthThrottleKind kind, IPAddress? address)
    {
        if (Table(kind)?.RetryAfter(address) is not { } wait)
        {
            return null;
        }

        _throttled.Add(1, new KeyValuePair<string, object?>("kind", TagOf(kind)));
        return Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds));
    }

    /// <summary>Counts a failed authentication from <paramref name="address"/>; logs the lockout it starts, if any.</summary>
    public void Failed(AuthThrottleKind kind, IPAddress? address)
    {
        var key = ClientAddresses.Key(address);
        if (Table(kind)?.Fail(key) is { } lockout)
        {
            _lockouts.Add(1, new KeyValuePair<string, object?>("kind", TagOf(kind)));
            SecurityLog.LockedOut(_logger, TagOf(kind), ClientAddresses.Describe(key),
                lockout.TotalSeconds.ToString("0", CultureInfo.InvariantCulture));
        }
    }

    private FailureTable? Table(AuthThrottleKind kind) => kind == AuthThrottleKind.SignIn ? _signIn : _apiKeys;

    private static string TagOf(AuthThrottleKind kind) => kind == AuthThrottleKind.SignIn ? "signin" : "apikey";
}
