using System.Runtime.ExceptionServices;
using System.Security.Claims;
using Conveyor.Api.Hosting;
using Conveyor.Storage;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Security;

/// <summary>
/// Who may call what. Two ways in: an API key on every request (<c>Authorization: Bearer</c> or
/// <c>X-Api-Key</c>, for programs) and a dashboard session cookie (issued once an operator pastes a key
/// into the sign-in form). A policy scheme picks one per request; the scopes behind both are the key's.
/// Everything needs an authenticated caller unless it says <c>AllowAnonymous</c> (health, metrics,
/// OpenAPI, the sign-in page and the dashboard's static files).
/// </summary>
public static class AccessControl
{
    /// <summary>The default scheme: forwards to <see cref="ApiKeyAuthenticationHandler.SchemeName"/> or <see cref="SessionScheme"/>.</summary>
    public const string SelectorScheme = "ApiKeyOrSession";

    /// <summary>The dashboard's cookie session.</summary>
    public const string SessionScheme = "DashboardSession";

    /// <summary>The session cookie; over HTTPS it travels as <c>__Host-conveyor.session</c> (<see cref="HostPrefixedCookies"/>).</summary>
    public const string SessionCookieName = "conveyor.session";

    /// <summary>The anti-forgery cookie; over HTTPS it travels as <c>__Host-conveyor.csrf</c> (<see cref="HostPrefixedCookies"/>).</summary>
    public const string AntiforgeryCookieName = "conveyor.csrf";

    public const string AntiforgeryHeaderName = "X-CSRF-TOKEN";
    public const string AntiforgeryFieldName = "__RequestVerificationToken";

    /// <summary>The logger category of ASP.NET Core's anti-forgery, silenced (see <see cref="AddAccessControl"/>).</summary>
    public const string AntiforgeryLogCategory = "Microsoft.AspNetCore.Antiforgery";

    /// <summary>Sent by the dashboard page on the requests of its periodic refreshes, which do not extend a session's idle limit.</summary>
    public const string RefreshHeader = "X-Conveyor-Refresh";

    /// <summary>A claim in the session naming which key signed in (a digest, never the key), so a rotated key ends its sessions.</summary>
    public const string KeyFingerprintClaim = "key_fp";

    /// <summary>A claim naming the session's row in <c>dashboard_sessions</c> (<see cref="DashboardSessionStore"/>).</summary>
    public const string SessionIdClaim = "sid";

    internal static IServiceCollection AddAccessControl(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<DashboardSessionOptions>()
            .BindConfiguration(DashboardSessionOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();
        services.AddSingleton<SessionValidator>();
        services.AddSingleton<DashboardSessionStore>();

        // Every Api replica must share the key ring, or a sign-in form or session cookie works only on the
        // pod that issued it and a rollout signs everyone out. By default it is kept in the database
        // (the keys are stored unprotected: see ADR 0003); a shared directory is the alternative.
        var dataProtection = services.AddDataProtection().SetApplicationName("conveyor-api");
        if (configuration[$"{DashboardSessionOptions.SectionName}:KeysDirectory"] is { Length: > 0 } keysDirectory)
        {
            dataProtection.PersistKeysToFileSystem(new DirectoryInfo(keysDirectory));
        }
        else
        {
            // Resolves the scoped ConveyorDbContext (taken from the pooled factory) in a scope of its own.
            dataProtection.PersistKeysToDbContext<ConveyorDbContext>();
        }

        var session = configuration.GetSection(DashboardSessionOptions.SectionName).Get<DashboardSessionOptions>() ?? new DashboardSessionOptions();
        var securePolicy = session.SecureCookies ? CookieSecurePolicy.Always : CookieSecurePolicy.SameAsRequest;
        services.AddAuthentication(SelectorScheme)
            .AddPolicyScheme(SelectorScheme, "API key or dashboard session", options => options.ForwardDefaultSelector = SelectScheme)
            .AddScheme<AuthenticationSchemeOptions, ApiKeyAuthenticationHandler>(ApiKeyAuthenticationHandler.SchemeName, null)
            .AddCookie(SessionScheme, options =>
            {
                options.Cookie.Name = SessionCookieName;
                options.Cookie.HttpOnly = true;
                options.Cookie.SameSite = SameSiteMode.Strict;
                options.Cookie.SecurePolicy = securePolicy;
                options.Cookie.Path = "/";
                options.ExpireTimeSpan = TimeSpan.FromMinutes(session.IdleMinutes);
                options.SlidingExpiration = true;
                options.LoginPath = DashboardPaths.Login;
                options.LogoutPath = DashboardPaths.Logout;
                options.Events = new CookieAuthenticationEvents
                {
                    OnRedirectToLogin = RedirectToLoginOr401,
                    OnRedirectToAccessDenied = context =>
                    {
                        context.Response.StatusCode = StatusCodes.Status403Forbidden;
                        return Task.CompletedTask;
                    },
                    OnValidatePrincipal = context => context.HttpContext.RequestServices.GetRequiredService<SessionValidator>().ValidateAsync(context),
                    // The page's own refreshes (it polls while open) are no sign of someone at the screen: they
                    // do not extend the idle limit, which an open tab would otherwise never reach.
                    OnCheckSlidingExpiration = context =>
                    {
                        if (context.Request.Headers.ContainsKey(RefreshHeader))
                        {
                            context.ShouldRenew = false;
                        }

                        return Task.CompletedTask;
                    },
                };
            });

        var authorization = services.AddAuthorizationBuilder();
        foreach (var (policyName, scopes) in ApiScopes.ByPolicy)
        {
            authorization.AddPolicy(policyName, policy => policy.RequireAuthenticatedUser()
                .RequireClaim(ApiKeyAuthenticationHandler.ScopeClaim, scopes));
        }

        // Default deny: an endpoint that names no policy still needs a signed-in caller.
        authorization.SetFallbackPolicy(new AuthorizationPolicyBuilder().RequireAuthenticatedUser().Build());

        services.AddAntiforgery(options =>
        {
            options.HeaderName = AntiforgeryHeaderName;
            options.FormFieldName = AntiforgeryFieldName;
            options.Cookie.Name = AntiforgeryCookieName;
            options.Cookie.HttpOnly = true;
            options.Cookie.SameSite = SameSiteMode.Strict;
            options.Cookie.SecurePolicy = securePolicy;
            // The security headers middleware sends frame-ancestors 'none' and X-Frame-Options: DENY.
            options.SuppressXFrameOptionsHeader = true;
        });
        // Anti-forgery logs what clients send it: an Error with a stack trace for each cookie or token it cannot
        // decrypt, a Warning for each one missing, and a Warning for every page it issues a token on (the
        // sign-in form included), since it replaces the no-store the security headers set. Anyone can send a
        // forged cookie, so anyone could write the error log at request rate. Every refusal is answered by our
        // own code (the CSRF 400, the sign-in form's "expired"); the category is silenced, whatever the
        // configured levels, as the key handler's Information lines are.
        services.AddLogging(logging => logging.AddFilter(AntiforgeryLogCategory, LogLevel.None));
        return services;
    }

    /// <summary>
    /// The sign-in form uses the session only: its key is the form's. Elsewhere a key in a header
    /// (<c>X-Api-Key</c>, or <c>Authorization: Bearer</c>) wins; otherwise the dashboard's pages, and any
    /// request carrying the session cookie, use the session; everything else is an API call without a key.
    /// An Authorization header of another scheme (a proxy's Basic, say) names no key of ours, so it leaves
    /// a session alone.
    /// </summary>
    public static string SelectScheme(HttpContext context)
    {
        var request = context.Request;
        // The form is open to anyone, so an unknown header key is neither refused nor counted there; read, a
        // valid one made the form's anti-forgery check fail (its token was issued to no one) where an unknown
        // one let it pass: a way to test keys past the throttle.
        if (request.Path.StartsWithSegments(DashboardPaths.Login, StringComparison.OrdinalIgnoreCase))
        {
            return SessionScheme;
        }

        if (request.Headers.ContainsKey(ApiKeyAuthenticationHandler.ApiKeyHeader) || ApiKeyAuthenticationHandler.HasBearer(request.Headers))
        {
            return ApiKeyAuthenticationHandler.SchemeName;
        }

        return request.Path.StartsWithSegments(DashboardPaths.Root, StringComparison.OrdinalIgnoreCase) || request.Cookies.ContainsKey(SessionCookieName)
            ? SessionScheme
            : ApiKeyAuthenticationHandler.SchemeName;
    }

    /// <summary>
    /// With <see cref="DashboardSessionOptions.SecureCookies"/>, takes every request as HTTPS: the Api is
    /// then reached only through a proxy that terminates TLS, and anti-forgery refuses to issue a Secure
    /// cookie on a request it believes is plain HTTP. No forwarded header is read, so none can be spoofed.
    /// </summary>
    public static IApplicationBuilder UseSecureCookieScheme(this IApplicationBuilder app)
    {
        if (!app.ApplicationServices.GetRequiredService<IOptions<DashboardSessionOptions>>().Value.SecureCookies)
        {
            return app;
        }

        return app.Use((context, next) =>
        {
            context.Request.Scheme = Uri.UriSchemeHttps;
            return next(context);
        });
    }

    /// <summary>True when the request was authenticated by the session cookie, which a browser sends by itself.</summary>
    public static bool IsSessionAuthenticated(HttpContext context) =>
        context.User.Identity is { IsAuthenticated: true } && SelectScheme(context) == SessionScheme;

    /// <summary>
    /// Every state-changing request authenticated by the session cookie must carry the anti-forgery token
    /// (header <see cref="AntiforgeryHeaderName"/> or form field), whatever endpoint it reaches. API-key
    /// callers need none: a browser never adds their header by itself.
    /// </summary>
    public static IApplicationBuilder UseSessionCsrfProtection(this IApplicationBuilder app) =>
        app.Use(async (context, next) =>
        {
            if (!IsSafeMethod(context.Request.Method) && IsSessionAuthenticated(context))
            {
                var antiforgery = context.RequestServices.GetRequiredService<IAntiforgery>();
                if (!await HasValidTokenAsync(antiforgery, context))
                {
                    if (DashboardPaths.IsLogin(context.Request.Path))
                    {
                        // The sign-in form again from a browser that is signed in already (a second tab, the
                        // back button): its token was made before the sign-in. Nothing is done; the browser
                        // goes to the dashboard it is signed in to, not to a JSON error.
                        context.Response.StatusCode = StatusCodes.Status303SeeOther;
                        context.Response.Headers.Location = DashboardPaths.Root + "/";
                        return;
                    }

                    await TypedResults.Problem(
                        statusCode: StatusCodes.Status400BadRequest,
                        title: "Missing or invalid anti-forgery token",
                        detail: $"A request signed in by the dashboard session must send the token from GET {DashboardPaths.Session} in the {AntiforgeryHeaderName} header.")
                        .ExecuteAsync(context);
                    return;
                }
            }

            await next(context);
        });

    /// <summary>
    /// <see cref="IAntiforgery.IsRequestValidAsync"/>, for a body that may not be a readable form. Without
    /// the header, the token is looked for in a form body, and a failure to read it comes wrapped in an
    /// <see cref="AntiforgeryValidationException"/>: a malformed form (no boundary, garbage parts, too many
    /// or too long fields, a charset that cannot be decoded, which comes unwrapped) carries no token, so the
    /// request is refused as any other; a body that failed
    /// to arrive (cut short, too slow, too large, the client gone) is rethrown as itself, to be answered
    /// as such wherever it is read.
    /// </summary>
    private static async Task<bool> HasValidTokenAsync(IAntiforgery antiforgery, HttpContext context)
    {
        try
        {
            return await antiforgery.IsRequestValidAsync(context);
        }
        catch (AntiforgeryValidationException exception)
            when (exception.InnerException is { } unreadable && UnreadableForms.IsMalformed(unreadable, context))
        {
            return false;
        }
        catch (NotSupportedException charset) when (UnreadableForms.IsMalformed(charset, context))
        {
            return false;
        }
        catch (AntiforgeryValidationException exception) when (exception.InnerException is IOException body)
        {
            ExceptionDispatchInfo.Throw(body);
            throw;
        }
    }

    public static bool IsSafeMethod(string method) =>
        HttpMethods.IsGet(method) || HttpMethods.IsHead(method) || HttpMethods.IsOptions(method) || HttpMethods.IsTrace(method);

    /// <summary>
    /// The principal a session carries: the key's name and scopes, a digest naming the key, and the session's
    /// id, also as its name identifier, to which antiforgery binds its tokens. Without one it bound them to a
    /// digest of every claim, so a token the page read before its key's scopes changed was refused, sign-out
    /// included.
    /// </summary>
    public static ClaimsPrincipal SessionPrincipal(ApiKeyIdentity identity, string keyFingerprint, Guid sessionId)
    {
        Claim[] claims =
        [
            new(ClaimTypes.Name, identity.Name),
            new(ClaimTypes.NameIdentifier, sessionId.ToString("D")),
            new(KeyFingerprintClaim, keyFingerprint),
            new(SessionIdClaim, sessionId.ToString("D")),
            .. identity.Scopes.Select(scope => new Claim(ApiKeyAuthenticationHandler.ScopeClaim, scope)),
        ];
        return new ClaimsPrincipal(new ClaimsIdentity(claims, SessionScheme, ClaimTypes.Name, ClaimTypes.Role));
    }

    /// <summary>Pages redirect to the sign-in form; API calls (and the dashboard's own JSON) get a plain 401.</summary>
    private static Task RedirectToLoginOr401(RedirectContext<CookieAuthenticationOptions> context)
    {
        var request = context.Request;
        if (HttpMethods.IsGet(request.Method)
            && request.Path.StartsWithSegments(DashboardPaths.Root, StringComparison.OrdinalIgnoreCase)
            && !request.Path.StartsWithSegments(DashboardPaths.DataRoot, StringComparison.OrdinalIgnoreCase))
        {
            context.Response.Redirect(DashboardPaths.Login);
            return Task.CompletedTask;
        }

        context.Response.StatusCode = StatusCodes.Status401Unauthorized;
        context.Response.Headers.WWWAuthenticate = "Bearer";
        return Task.CompletedTask;
    }
}

/// <summary>Paths of the dashboard that access control needs to know.</summary>
public static class DashboardPaths
{
    public const string Root = "/dashboard";
    public const string DataRoot = "/dashboard/api";
    public const string Login = "/dashboard/login";
    public const string Logout = "/dashboard/logout";
    public const string Session = "/dashboard/api/session";

    /// <summary>The sign-in form's path as routing takes it: any casing, with or without a trailing slash.</summary>
    public static bool IsLogin(PathString path) =>
        path.StartsWithSegments(Login, StringComparison.OrdinalIgnoreCase, out var rest) && (!rest.HasValue || rest.Value == "/");
}
