using Conveyor.Api.Security;

namespace Conveyor.Api.Dashboard;

/// <summary>Response headers that keep the dashboard's pages (and the JSON API) from being framed, sniffed or scripted inline.</summary>
internal static class SecurityHeaders
{
    /// <summary>Only the dashboard's own files run or load; no inline script or style, no framing, forms post only here.</summary>
    public const string DashboardPolicy =
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        + "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

    /// <summary>JSON is never a document to render.</summary>
    public const string ApiPolicy = "default-src 'none'; frame-ancestors 'none'";

    /// <summary>
    /// Set before the request runs (an endpoint may change one, such as a file's caching), and set again as
    /// the answer starts wherever one is missing: the exception handler clears the response before it
    /// writes its problem (a 500, the database's 503, a body Kestrel refused), headers included.
    /// </summary>
    public static IApplicationBuilder UseSecurityHeaders(this IApplicationBuilder app) =>
        app.Use((context, next) =>
        {
            var dashboard = context.Request.Path.StartsWithSegments(DashboardPaths.Root, StringComparison.OrdinalIgnoreCase);
            // Pages and data show queue contents (message bodies, fault texts) and jobs: never keep them in a
            // shared or back-button cache, whether the dashboard fetched them or a browser opened the URL.
            var noStore = dashboard || context.Request.Path.StartsWithSegments("/api", StringComparison.OrdinalIgnoreCase);
            Apply(context.Response.Headers, dashboard, noStore, replace: true);
            context.Response.OnStarting(() =>
            {
                Apply(context.Response.Headers, dashboard, noStore, replace: false);
                return Task.CompletedTask;
            });
            return next(context);
        });

    private static void Apply(IHeaderDictionary headers, bool dashboard, bool noStore, bool replace)
    {
        Set(headers, Microsoft.Net.Http.Headers.HeaderNames.ContentSecurityPolicy, dashboard ? DashboardPolicy : ApiPolicy, replace);
        Set(headers, Microsoft.Net.Http.Headers.HeaderNames.XContentTypeOptions, "nosniff", replace);
        Set(headers, Microsoft.Net.Http.Headers.HeaderNames.XFrameOptions, "DENY", replace);
        Set(headers, "Referrer-Policy", "no-referrer", replace);
        if (noStore)
        {
            Set(headers, Microsoft.Net.Http.Headers.HeaderNames.CacheControl, "no-store", replace);
        }
    }

    private static void Set(IHeaderDictionary headers, string name, string value, bool replace)
    {
        if (replace || !headers.ContainsKey(name))
        {
            headers[name] = value;
        }
    }
}
