using System.Collections;
using System.Diagnostics.CodeAnalysis;
using Microsoft.AspNetCore.Http.Features;

namespace Conveyor.Api.Security;

/// <summary>
/// Over HTTPS (or what <see cref="AccessControl.UseSecureCookieScheme"/> takes as HTTPS) every cookie of the Api
/// is a <c>__Host-</c> cookie: <c>conveyor.session</c> travels as <c>__Host-conveyor.session</c>, Secure,
/// <c>Path=/</c>, without a Domain. A browser keeps a cookie of such a name only from an HTTPS response of this
/// very host, so neither a sibling subdomain (a cookie for the parent domain) nor a plain-HTTP response forged
/// on the network can plant or overwrite one (session fixation, cookie tossing). A cookie without the prefix
/// is not read over HTTPS at all: one planted under the plain name is never taken for a session or an
/// anti-forgery token. Over plain HTTP (local development, the loopback tests) a browser refuses every
/// <c>__Host-</c> cookie, since it cannot be Secure there, so the plain names stay.
/// </summary>
/// <remarks>
/// Done here, under the names the rest of the Api uses, rather than in each cookie's options: anti-forgery
/// names its cookie once for every request, and a cookie's name must follow the request's scheme.
/// </remarks>
public static class HostPrefixedCookies
{
    public const string Prefix = "__Host-";

    /// <summary>Must come after anything that sets the request's scheme and before anything that reads or sets a cookie.</summary>
    public static IApplicationBuilder UseHostPrefixedCookies(this IApplicationBuilder app) =>
        app.Use((context, next) =>
        {
            if (context.Request.IsHttps)
            {
                context.Features.Set<IRequestCookiesFeature>(new RequestCookiesFeature(new PrefixedRequestCookies(context.Request.Cookies)));
                context.Features.Set<IResponseCookiesFeature>(new PrefixedResponseCookies(context.Response.Cookies));
            }

            return next(context);
        });

    /// <summary>The request's <c>__Host-</c> cookies under their names without the prefix; no other cookie.</summary>
    private sealed class PrefixedRequestCookies : IRequestCookieCollection
    {
        // Names compare as in ASP.NET Core's own collection; the prefix does not: only its exact spelling is
        // one that every browser enforces, so a "__host-" cookie may have come from anywhere.
        private readonly Dictionary<string, string> _cookies = new(StringComparer.OrdinalIgnoreCase);

        public PrefixedRequestCookies(IRequestCookieCollection all)
        {
            foreach (var (name, value) in all)
            {
                if (name.StartsWith(Prefix, StringComparison.Ordinal))
                {
                    _cookies.TryAdd(name[Prefix.Length..], value);
                }
            }
        }

        public int Count => _cookies.Count;

        public ICollection<string> Keys => _cookies.Keys;

        public string? this[string key] => _cookies.GetValueOrDefault(key);

        public bool ContainsKey(string key) => _cookies.ContainsKey(key);

        public bool TryGetValue(string key, [NotNullWhen(true)] out string? value) => _cookies.TryGetValue(key, out value);

        public IEnumerator<KeyValuePair<string, string>> GetEnumerator() => _cookies.GetEnumerator();

        IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
    }

    /// <summary>Sets and deletes cookies under their prefixed names (and is the feature that hands itself out).</summary>
    private sealed class PrefixedResponseCookies(IResponseCookies cookies) : IResponseCookies, IResponseCookiesFeature
    {
        public IResponseCookies Cookies => this;

        public void Append(string key, string value) => Append(key, value, new CookieOptions());

        public void Append(string key, string value, CookieOptions options) => cookies.Append(Prefix + key, value, HostOnly(options));

        public void Append(ReadOnlySpan<KeyValuePair<string, string>> keyValuePairs, CookieOptions options)
        {
            foreach (var (key, value) in keyValuePairs)
            {
                Append(key, value, options);
            }
        }

        public void Delete(string key) => Delete(key, new CookieOptions());

        // A browser ignores the deletion of a __Host- cookie that does not meet the prefix's rules either.
        public void Delete(string key, CookieOptions options) => cookies.Delete(Prefix + key, HostOnly(options));

        /// <summary>The options with what the prefix demands; a browser drops a <c>__Host-</c> cookie that lacks any of it.</summary>
        private static CookieOptions HostOnly(CookieOptions options) => new(options) { Secure = true, Path = "/", Domain = null };
    }
}
