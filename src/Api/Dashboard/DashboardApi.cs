using System.Reflection;
using Conveyor.Api.Backpressure;
using Conveyor.Api.ErrorQueues;
using Conveyor.Api.Hosting;
using Conveyor.Api.Security;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;
using Microsoft.Net.Http.Headers;

namespace Conveyor.Api.Dashboard;

/// <summary>
/// The operations dashboard under <c>/dashboard</c>: a sign-in form, one static page with its script
/// and style (embedded in the assembly), and two JSON endpoints of its own (the session, the queue
/// overview). Everything else it shows comes from the public JSON API, called with the session cookie
/// and the anti-forgery token.
/// </summary>
internal static class DashboardApi
{
    /// <summary>
    /// The largest sign-in body: a key and the anti-forgery token take a few hundred bytes. Anyone may
    /// post the form, so nothing larger is read at all (ADR 0003, amendment of 2026-12-01).
    /// </summary>
    public const int MaxSignInBodyBytes = 8 * 1024;

    private static readonly (string Path, string Resource, string ContentType)[] Assets =
    [
        ("/dashboard/app.js", "Dashboard/app.js", "text/javascript; charset=utf-8"),
        ("/dashboard/app.css", "Dashboard/app.css", "text/css; charset=utf-8"),
    ];

    public static IServiceCollection AddDashboard(this IServiceCollection services)
    {
        services.AddHttpClient(QueueOverviewSource.HttpClientName, (provider, http) =>
            RabbitManagementClient.Configure(http, provider.GetRequiredService<IOptions<ServiceDefaults.RabbitMqOptions>>().Value));
        // One instance, so one cached listing serves every open dashboard.
        services.AddSingleton<QueueOverviewSource>();
        return services;
    }

    public static IEndpointRouteBuilder MapDashboard(this IEndpointRouteBuilder endpoints)
    {
        var dashboard = endpoints.MapGroup(DashboardPaths.Root).ExcludeFromDescription();

        dashboard.MapGet("/login", ShowLogin).AllowAnonymous();
        dashboard.MapPost("/login", SignIn).AllowAnonymous();
        dashboard.MapPost("/logout", SignOut);

        var page = Resource("Dashboard/index.html");
        // Matches /dashboard and /dashboard/ alike.
        dashboard.MapGet("", () => TypedResults.Text(page, "text/html; charset=utf-8"));
        foreach (var (path, resource, contentType) in Assets)
        {
            var text = Resource(resource);
            // Static, public and harmless: the sign-in page needs the style before anyone signs in.
            endpoints.MapGet(path, () => TypedResults.Text(text, contentType)).AllowAnonymous().ExcludeFromDescription();
        }

        dashboard.MapGet("/api/session", Session);
        dashboard.MapGet("/api/overview", Overview).RequireAuthorization(ApiPolicies.JobsRead);
        return endpoints;
    }

    internal static IResult ShowLogin(HttpContext http, IAntiforgery antiforgery)
    {
        if (AccessControl.IsSessionAuthenticated(http))
        {
            return TypedResults.Redirect(DashboardPaths.Root + "/");
        }

        return LoginResult(http, antiforgery, null, StatusCodes.Status200OK);
    }

    internal static async Task<IResult> SignIn(
        HttpContext http, IAntiforgery antiforgery, ApiKeyStore keys, DashboardSessionStore sessions,
        IOptions<DashboardSessionOptions> options, AuthThrottle throttle, ILoggerFactory loggers)
    {
        if (RefuseSignInBody(http) is { } refused)
        {
            return refused;
        }

        var logger = loggers.CreateLogger(typeof(DashboardApi).FullName!);
        var client = http.Connection.RemoteIpAddress?.ToString();
        // Read here, before the anti-forgery check reads it, so that a malformed form (which no browser
        // sends) is the client's mistake, a 400, not an exception. A body that fails to arrive (cut
        // short, too slow, too large) throws on, for the exception handler to answer with Kestrel's status.
        IFormCollection form;
        try
        {
            form = await http.Request.ReadFormAsync(http.RequestAborted);
        }
        catch (Exception exception) when (UnreadableForms.IsMalformed(exception, http))
        {
            DashboardLog.SignInFormUnreadable(logger, client, exception.Message);
            return TypedResults.Problem(statusCode: StatusCodes.Status400BadRequest, title: "Malformed form",
                detail: "The sign-in form could not be read: " + exception.Message);
        }

        // Signing someone in under an attacker's key is a forgery too.
        if (!await antiforgery.IsRequestValidAsync(http))
        {
            return LoginResult(http, antiforgery, "The form expired; please sign in again.", StatusCodes.Status400BadRequest);
        }

        // A valid key signs in whatever the address's state (the throttle is not consulted). An unknown one
        // from a locked-out address is refused with 429, not logged (the lockout was, once) and not counted.
        var presented = form["apiKey"].ToString().Trim();
        if (presented.Length == 0 || keys.Find(presented) is not { } identity)
        {
            if (throttle.RetryAfterSeconds(AuthThrottleKind.SignIn, http.Connection.RemoteIpAddress) is { } seconds)
            {
                throttle.Throttled(AuthThrottleKind.SignIn);
                RetryAfterResponses.Set(http.Response, seconds);
                return LoginResult(http, antiforgery, $"Too many failed sign-ins from your address; try again in {seconds} s.",
                    StatusCodes.Status429TooManyRequests);
            }

            throttle.Failed(AuthThrottleKind.SignIn, http.Connection.RemoteIpAddress);
            DashboardLog.SignInRefused(logger, client);
            return LoginResult(http, antiforgery, "That API key is not valid.", StatusCodes.Status401Unauthorized);
        }

        // A browser signed in already (its session's anti-forgery token lets it post the form) gets a new
        // session in place of that one: left live, the old cookie, and any copy of it, would still work.
        if (await http.AuthenticateAsync(AccessControl.SessionScheme) is { Succeeded: true, Principal: { } previous }
            && Guid.TryParse(previous.FindFirst(AccessControl.SessionIdClaim)?.Value, out var previousId))
        {
            await sessions.EndAsync(previousId, http.RequestAborted);
        }

        var sessionId = await sessions.StartAsync(identity.Name, options.Value.MaxLifetime, options.Value.MaxSessionsPerKey, http.RequestAborted);
        var principal = AccessControl.SessionPrincipal(identity, SessionValidator.Fingerprint(presented), sessionId);
        await http.SignInAsync(AccessControl.SessionScheme, principal, new AuthenticationProperties { IsPersistent = false });
        DashboardLog.SignedIn(logger, identity.Name, client);
        return TypedResults.Redirect(DashboardPaths.Root + "/");
    }

    /// <summary>
    /// Refuses a sign-in body before anything reads it: larger than <see cref="MaxSignInBodyBytes"/> (413)
    /// or not <c>application/x-www-form-urlencoded</c> in UTF-8 (415; the form sends nothing else, and a multipart
    /// body would be buffered, its file parts to disk, to look for the anti-forgery token). A body of no
    /// declared length is cut off at the limit as it is read: the server answers 413.
    /// </summary>
    private static ProblemHttpResult? RefuseSignInBody(HttpContext http)
    {
        var request = http.Request;
        if (request.ContentLength > MaxSignInBodyBytes)
        {
            return TypedResults.Problem(statusCode: StatusCodes.Status413PayloadTooLarge, title: "Request body too large",
                detail: $"The sign-in form must be at most {MaxSignInBodyBytes} bytes.");
        }

        // A charset other than UTF-8 (a browser names none) is refused too: UTF-7 made the form reader throw, a 500.
        if (!MediaTypeHeaderValue.TryParse(request.ContentType, out var type)
            || !type.MediaType.Equals("application/x-www-form-urlencoded", StringComparison.OrdinalIgnoreCase)
            || (type.Charset.HasValue && !HeaderUtilities.RemoveQuotes(type.Charset).Equals("utf-8", StringComparison.OrdinalIgnoreCase)))
        {
            return TypedResults.Problem(statusCode: StatusCodes.Status415UnsupportedMediaType, title: "Unsupported media type",
                detail: "The sign-in form is read as application/x-www-form-urlencoded (UTF-8) only.");
        }

        if (http.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } limit)
        {
            limit.MaxRequestBodySize = MaxSignInBodyBytes;
        }

        return null;
    }

    /// <summary>
    /// Ends the session the cookie names, on every replica (its row is deleted, so a saved copy of the
    /// cookie is refused), and clears the cookie. A caller with an API key and no session signs nobody out.
    /// </summary>
    internal static async Task<NoContent> SignOut(HttpContext http, DashboardSessionStore sessions, ILoggerFactory loggers)
    {
        // The session itself, whichever scheme authenticated the request (a key header wins there).
        var session = await http.AuthenticateAsync(AccessControl.SessionScheme);
        if (session is { Succeeded: true, Principal: { } principal }
            && Guid.TryParse(principal.FindFirst(AccessControl.SessionIdClaim)?.Value, out var sessionId))
        {
            await sessions.EndAsync(sessionId, http.RequestAborted);
            var logger = loggers.CreateLogger(typeof(DashboardApi).FullName!);
            var who = principal.Identity?.Name ?? "(unknown)";
            DashboardLog.SignedOut(logger, who);
        }

        await http.SignOutAsync(AccessControl.SessionScheme);
        return TypedResults.NoContent();
    }

    /// <summary>Who is signed in, with which scopes, and the token that state-changing calls must send.</summary>
    internal static Ok<DashboardSession> Session(HttpContext http, IAntiforgery antiforgery)
    {
        var tokens = antiforgery.GetAndStoreTokens(http);
        var scopes = http.User.FindAll(ApiKeyAuthenticationHandler.ScopeClaim).Select(c => c.Value).Order(StringComparer.Ordinal).ToList();
        return TypedResults.Ok(new DashboardSession(
            http.User.Identity?.Name ?? "", scopes, tokens.RequestToken!, AccessControl.AntiforgeryHeaderName));
    }

    internal static async Task<Results<Ok<QueueOverview>, ProblemHttpResult>> Overview(
        HttpContext http, QueueOverviewSource source, BrokerPressureMonitor pressure, CancellationToken cancellationToken)
    {
        try
        {
            return TypedResults.Ok(await source.ReadAsync(pressure.Current.Alarms, cancellationToken));
        }
        catch (BrokerUnavailableException)
        {
            return RetryAfterResponses.RetryLater(http, ErrorQueuesApi.RetryAfterSeconds, TypedResults.Problem(
                statusCode: StatusCodes.Status503ServiceUnavailable,
                title: "Message broker unavailable", detail: "RabbitMQ's management API could not be reached; retry later."));
        }
    }

    private static ContentHttpResult LoginResult(HttpContext http, IAntiforgery antiforgery, string? error, int status)
    {
        var tokens = antiforgery.GetAndStoreTokens(http);
        return TypedResults.Text(LoginPage.Render(tokens.RequestToken!, error), "text/html; charset=utf-8", statusCode: status);
    }

    private static string Resource(string name)
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
            ?? throw new InvalidOperationException($"The dashboard asset {name} is not embedded.");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}

/// <summary>Body of <c>GET /dashboard/api/session</c>.</summary>
public sealed record DashboardSession(string Name, IReadOnlyList<string> Scopes, string CsrfToken, string CsrfHeader);
