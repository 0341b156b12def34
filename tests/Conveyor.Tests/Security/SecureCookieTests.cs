using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Security;

/// <summary>
/// Behind a TLS-terminating proxy the Api sees plain HTTP; <c>Dashboard:Session:SecureCookies</c> takes every
/// request as HTTPS all the same, so the session and anti-forgery cookies are Secure <c>__Host-</c> cookies, and
/// a cookie under the plain name (which a sibling subdomain or a forged plain-HTTP response can plant in the
/// browser) counts for nothing.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class SecureCookieTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string SessionCookie = "__Host-conveyor.session";
    private const string AntiforgeryCookie = "__Host-conveyor.csrf";

    private RunningApp _api = null!;

    // A client would not send Secure cookies back over HTTP, so Cookie headers are written by hand, as the proxy's would be.
    private HttpClient _proxy = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:Enabled"] = "false",
            ["Dashboard:Session:SecureCookies"] = "true",
        });
        _proxy = new HttpClient(new HttpClientHandler { UseCookies = false, AllowAutoRedirect = false })
        {
            BaseAddress = _api.BaseAddress,
            Timeout = TimeSpan.FromSeconds(60),
        };
    }

    public async Task DisposeAsync()
    {
        _proxy.Dispose();
        await _api.DisposeAsync();
    }

    [Fact]
    public async Task Over_plain_HTTP_the_session_and_antiforgery_cookies_are_Secure_host_cookies_and_signing_out_deletes_one_so()
    {
        var (antiforgery, formToken) = await SignInFormAsync();
        using var signedIn = await SignInAsync(CookieOf(antiforgery), formToken);

        Assert.Equal(HttpStatusCode.Redirect, signedIn.StatusCode);
        var session = SetCookies.Of(signedIn, SessionCookie);
        SetCookies.AssertHostCookie(antiforgery);
        SetCookies.AssertHostCookie(session);

        // A browser ignores the deletion of a __Host- cookie that breaks the prefix's rules: the cookie would stay.
        var cookies = $"{CookieOf(session)}; {CookieOf(antiforgery)}";
        using var signedOut = await SendAsync(HttpMethod.Post, "/dashboard/logout", cookies, csrfToken: await CsrfTokenAsync(cookies));

        Assert.Equal(HttpStatusCode.NoContent, signedOut.StatusCode);
        var deletion = SetCookies.Of(signedOut, SessionCookie);
        Assert.StartsWith(SessionCookie + "=;", deletion, StringComparison.Ordinal);
        Assert.Contains("expires=Thu, 01 Jan 1970", deletion, StringComparison.OrdinalIgnoreCase);
        SetCookies.AssertHostCookie(deletion);
    }

    [Fact]
    public async Task A_session_cookie_under_the_plain_name_is_not_honoured()
    {
        // A session of the attacker's own, planted under the plain name, would sign the victim in as the attacker.
        var (antiforgery, formToken) = await SignInFormAsync();
        using var signedIn = await SignInAsync(CookieOf(antiforgery), formToken);
        Assert.Equal(HttpStatusCode.Redirect, signedIn.StatusCode);
        var session = ValueOf(SetCookies.Of(signedIn, SessionCookie));
        var planted = "conveyor.session=" + session;

        foreach (var path in new[] { "/dashboard/api/session", "/api/audit" })
        {
            using var response = await SendAsync(HttpMethod.Get, path, planted);
            Assert.True(response.StatusCode == HttpStatusCode.Unauthorized, $"{path}: {response.StatusCode}");
        }

        using var page = await SendAsync(HttpMethod.Get, "/dashboard/", planted);
        Assert.Equal(HttpStatusCode.Redirect, page.StatusCode);
        Assert.Equal("/dashboard/login", page.Headers.Location?.OriginalString);
        using var own = await SendAsync(HttpMethod.Get, "/dashboard/api/session", $"{SessionCookie}={session}");
        Assert.Equal(HttpStatusCode.OK, own.StatusCode);
    }

    [Fact]
    public async Task An_antiforgery_cookie_under_the_plain_name_does_not_pass_the_sign_in_form()
    {
        var (antiforgery, formToken) = await SignInFormAsync();

        using var planted = await SignInAsync("conveyor.csrf=" + ValueOf(antiforgery), formToken);
        Assert.Equal(HttpStatusCode.BadRequest, planted.StatusCode);
        Assert.DoesNotContain(planted.Headers.GetValues("Set-Cookie"), c => c.StartsWith(SessionCookie + "=", StringComparison.Ordinal));

        using var own = await SignInAsync(CookieOf(antiforgery), formToken);
        Assert.Equal(HttpStatusCode.Redirect, own.StatusCode);
    }

    /// <summary>The sign-in form's <c>Set-Cookie</c> of its anti-forgery cookie, and the token in the form.</summary>
    private async Task<(string AntiforgerySetCookie, string Token)> SignInFormAsync()
    {
        using var form = await _proxy.GetAsync(new Uri("/dashboard/login", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, form.StatusCode);
        return (SetCookies.Of(form, AntiforgeryCookie), DashboardBrowser.FormToken(await form.Content.ReadAsStringAsync()));
    }

    private Task<HttpResponseMessage> SignInAsync(string cookies, string formToken) =>
        SendAsync(HttpMethod.Post, "/dashboard/login", cookies, DashboardBrowser.LoginForm(TestKeys.Admin, formToken));

    private async Task<string> CsrfTokenAsync(string cookies)
    {
        using var response = await SendAsync(HttpMethod.Get, "/dashboard/api/session", cookies);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("csrfToken").GetString()!;
    }

    private async Task<HttpResponseMessage> SendAsync(HttpMethod method, string path, string cookies, HttpContent? content = null, string? csrfToken = null)
    {
        using var request = new HttpRequestMessage(method, new Uri(path, UriKind.Relative)) { Content = content };
        request.Headers.Add("Cookie", cookies);
        if (csrfToken is not null)
        {
            request.Headers.Add("X-CSRF-TOKEN", csrfToken);
        }

        return await _proxy.SendAsync(request);
    }

    /// <summary>The <c>name=value</c> a browser sends back for a <c>Set-Cookie</c>.</summary>
    private static string CookieOf(string setCookie) => setCookie.Split(';')[0];

    private static string ValueOf(string setCookie) => CookieOf(setCookie).Split('=', 2)[1];
}
