namespace Conveyor.Tests.Security;

/// <summary>The <c>Set-Cookie</c> headers of a response, judged as a browser judges them.</summary>
internal static class SetCookies
{
    /// <summary>The one header that sets (or deletes) the cookie named <paramref name="name"/>.</summary>
    public static string Of(HttpResponseMessage response, string name) =>
        Assert.Single(response.Headers.GetValues("Set-Cookie"), c => c.StartsWith(name + "=", StringComparison.Ordinal));

    /// <summary>
    /// A <c>__Host-</c> cookie as a browser accepts it (Secure, <c>Path=/</c>, no Domain: one short of them and the
    /// browser drops it), and HttpOnly and SameSite=Strict, as every cookie of the dashboard is.
    /// </summary>
    public static void AssertHostCookie(string setCookie)
    {
        Assert.StartsWith("__Host-", setCookie, StringComparison.Ordinal);
        var attributes = setCookie.Split(';').Skip(1).Select(a => a.Trim()).ToList();
        Assert.Contains("secure", attributes, StringComparer.OrdinalIgnoreCase);
        Assert.Contains("path=/", attributes, StringComparer.OrdinalIgnoreCase);
        Assert.DoesNotContain(attributes, a => a.StartsWith("domain", StringComparison.OrdinalIgnoreCase));
        Assert.Contains("httponly", attributes, StringComparer.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", attributes, StringComparer.OrdinalIgnoreCase);
    }
}
