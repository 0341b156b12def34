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

    public static IApplicationBuilder UseSecurityHeaders(this IApplicationBuilder app) =>
        app.Use((context, next) =>
        {
            var headers = context.Response.Headers;
            var dashboard = context.Request.Path.StartsWithSegments(DashboardPaths.Root, StringComparison.OrdinalIgnoreCase);
            headers.ContentSecurityPolicy = dashboard ? DashboardPolicy : ApiPolicy;
            headers.XContentTypeOptions = "nosniff";
            headers.XFrameOptions = "DENY";
            headers["Referrer-Policy"] = "no-referrer";
            if (dashboard || context.Request.Path.StartsWithSegments("/api", StringComparison.OrdinalIgnoreCase))
            {
                // Pages and data show queue contents (message bodies, fault texts) and jobs: never keep them in a
                // shared or back-button cache, whether the dashboard fetched them or a browser opened the URL.
                headers.CacheControl = "no-store";
            }

            return next(context);
        });
}
