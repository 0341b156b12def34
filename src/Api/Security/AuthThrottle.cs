using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using Conveyor.Api.Hosting;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Security;

/// <summary>What was being authenticated: the dashboard's sign-in form or a key header.</summary>
public enum AuthThrottleKind
{
    SignIn,
    ApiKey,
}

/// <summary>
/// Throttles guessing of API keys, per client address and per kind: once an address has presented
/// <see cref="AuthThrottleLimits.MaxFailures"/> unknown keys within the window, every further unknown key
/// from it is refused with 429 and <c>Retry-After</c> (instead of 401) until the lockout ends, neither
/// counted nor extending the lockout. A valid key is always accepted and never consults the throttle:
/// keys are long and random, so refusing them would stop no guesser, while every client behind the
/// ingress shares its addresses, so it would let anyone lock every service out (ADR 0003 decision 11).
/// The throttle sheds and flags scanners: each lockout is logged once and counted in
/// <c>conveyor.api.auth.lockouts</c>; each request refused with 429 in <c>conveyor.api.auth.throttled</c>.
/// State is per replica: with N replicas behind a balancer an address gets up to N times the limit.
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
            description: "Unknown keys refused with 429 because the client address is locked out (kind=signin|apikey)");
        _lockouts = meter.CreateCounter<long>(LockoutsInstrumentName, unit: "{lockout}",
            description: "Client addresses locked out after too many failed authentications (kind=signin|apikey)");
        _logger = logger;
    }

    /// <summary>Addresses remembered for <paramref name="kind"/> (for tests and diagnostics).</summary>
    public int Tracked(AuthThrottleKind kind) => Table(kind)?.Count ?? 0;

    /// <summary>
    /// For an unknown key only (a valid one is accepted without asking): null when <paramref name="address"/>
    /// is not locked out, so the key is refused with 401 and <see cref="Failed"/> counts it; otherwise the
    /// whole seconds until the lockout ends (at least 1), for the 429 that <see cref="Throttled"/> counts.
    /// </summary>
    public int? RetryAfterSeconds(AuthThrottleKind kind, IPAddress? address) =>
        Table(kind)?.RetryAfter(address) is { } wait ? RetryAfterResponses.SecondsOf(wait) : null;

    /// <summary>
    /// Counts a request refused with 429 for its address's lockout in <c>conveyor.api.auth.throttled</c>. Not
    /// counted where the key is only looked at: an endpoint open to anyone (<c>/health/live</c>) answers
    /// an unknown key from a locked-out address as if there were none.
    /// </summary>
    public void Throttled(AuthThrottleKind kind) =>
        _throttled.Add(1, new KeyValuePair<string, object?>("kind", TagOf(kind)));

    /// <summary>
    /// Counts an unknown key from <paramref name="address"/> (one not locked out); logs the lockout it starts, if any.
    /// </summary>
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
