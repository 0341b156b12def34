using System.Globalization;

namespace Conveyor.ServiceDefaults;

/// <summary>
/// A webhook receiver's origin, <c>scheme://host:port</c>, in one spelling: lower case, the host in
/// its ASCII (punycode) form without a final dot, the port always written, default ports included. So
/// <c>HTTPS://Hooks.Example.com</c>, <c>https://hooks.example.com:443/</c> and a delivery URL
/// <c>https://hooks.example.com/a?b=c</c> are one origin, and <c>http://</c> or another port is another
/// receiver. User information in a URL is no part of it.
/// </summary>
public static class WebhookOrigin
{
    /// <summary>The origin of an absolute http or https URL (a delivery's, which its contract checked).</summary>
    public static string Of(Uri url)
    {
        // IdnHost drops an IPv6 literal's brackets, which the written form needs to stay unambiguous. A
        // name's final dot (the root) names the same host, so a URL cannot step around its receiver with one.
        var host = url.HostNameType == UriHostNameType.IPv6 ? url.Host : url.IdnHost.TrimEnd('.');
        return string.Create(CultureInfo.InvariantCulture, $"{url.Scheme}://{host}:{url.Port}").ToLowerInvariant();
    }

    /// <summary>
    /// Reads a configured origin: an absolute http or https URL with a host and nothing after it but an
    /// optional '/'. A path, query or fragment is refused rather than ignored, since it would suggest
    /// that only the URLs under it are that receiver's; user information is refused as a likely secret.
    /// </summary>
    /// <returns>Null and the origin, or why <paramref name="value"/> is not one.</returns>
    public static string? Read(string? value, out string origin)
    {
        origin = "";
        if (string.IsNullOrWhiteSpace(value))
        {
            return "is required";
        }

        if (!Uri.TryCreate(value.Trim(), UriKind.Absolute, out var url)
            || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps)
            || url.Host.Length == 0)
        {
            return $"'{value}' is not an absolute http or https URL";
        }

        if (url.UserInfo.Length > 0)
        {
            return $"'{value}' has user information; an origin is scheme, host and port only";
        }

        if (url.AbsolutePath != "/" || url.Query.Length > 0 || url.Fragment.Length > 0 || value.AsSpan().IndexOfAny('?', '#') >= 0)
        {
            return $"'{value}' has a path, query or fragment; an origin is scheme, host and port only (every URL of that origin is the receiver's)";
        }

        origin = Of(url);
        return null;
    }
}
