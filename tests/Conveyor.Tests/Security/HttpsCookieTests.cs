using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Security;

/// <summary>
/// An Api that serves HTTPS itself, beside plain HTTP on another port of the same host, without
/// <c>Dashboard:Session:SecureCookies</c>: the cookies' names follow each request's scheme, and a session
/// cookie that a plain-HTTP response put into the browser (an attacker on the network can forge one) is never
/// honoured over HTTPS. A browser sends a host's cookies to each of its ports, whatever the scheme, unless
/// they are Secure.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class HttpsCookieTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private static readonly Uri Login = new("/dashboard/login", UriKind.Relative);
    private static readonly Uri Session = new("/dashboard/api/session", UriKind.Relative);

    private readonly X509Certificate2 _certificate = SelfSignedCertificate();
    private RunningApp _api = null!;
    private Uri _http = null!;
    private Uri _https = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false" },
            builder => builder.WebHost.ConfigureKestrel(kestrel =>
            {
                kestrel.Listen(IPAddress.Loopback, 0);
                kestrel.Listen(IPAddress.Loopback, 0, endpoint => endpoint.UseHttps(_certificate));
            }));
        var addresses = _api.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Select(a => new Uri(a)).ToList();
        _http = Assert.Single(addresses, a => a.Scheme == Uri.UriSchemeHttp);
        _https = Assert.Single(addresses, a => a.Scheme == Uri.UriSchemeHttps);
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        _certificate.Dispose();
    }

    [Fact]
    public async Task The_cookies_are_host_cookies_over_HTTPS_and_keep_their_plain_names_over_HTTP()
    {
        var (httpAntiforgery, httpSession) = await SignInAsync(_http, "");
        var (httpsAntiforgery, httpsSession) = await SignInAsync(_https, "__Host-");

        // Plain HTTP: a browser would drop a __Host- cookie, or a Secure one, from this origin.
        Assert.DoesNotContain("; secure", httpAntiforgery, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("; secure", httpSession, StringComparison.OrdinalIgnoreCase);
        SetCookies.AssertHostCookie(httpsAntiforgery);
        SetCookies.AssertHostCookie(httpsSession);
    }

    [Fact]
    public async Task A_session_cookie_set_over_plain_HTTP_is_not_honoured_over_HTTPS()
    {
        var cookies = new CookieContainer();
        using var http = Browser(_http, cookies);
        using var https = Browser(_https, cookies);

        // The attacker's own session, set over plain HTTP: the browser sends it to the HTTPS origin as well.
        await DashboardBrowser.SignInAsync(http, TestKeys.Admin);
        Assert.NotNull(cookies.GetCookies(_https)["conveyor.session"]);
        using (var planted = await https.GetAsync(Session))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, planted.StatusCode);
        }

        // Signed in over HTTPS with a key of its own, the browser is that key's, the planted cookie sent beside.
        await DashboardBrowser.SignInAsync(https, TestKeys.Reader);
        Assert.NotNull(cookies.GetCookies(_https)["conveyor.session"]);
        var session = await https.GetFromJsonAsync<JsonElement>(Session);
        Assert.Equal(TestKeys.ReaderName, session.GetProperty("name").GetString());
        using var errorQueues = await https.GetAsync(new Uri("/api/error-queues", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Forbidden, errorQueues.StatusCode);
    }

    /// <summary>Signs a new browser in at <paramref name="address"/>; its anti-forgery and session <c>Set-Cookie</c>s.</summary>
    private async Task<(string Antiforgery, string Session)> SignInAsync(Uri address, string prefix)
    {
        using var browser = Browser(address, new CookieContainer());
        using var form = await browser.GetAsync(Login);
        Assert.Equal(HttpStatusCode.OK, form.StatusCode);
        var antiforgery = SetCookies.Of(form, prefix + "conveyor.csrf");
        using var signedIn = await browser.PostAsync(Login,
            DashboardBrowser.LoginForm(TestKeys.Reader, DashboardBrowser.FormToken(await form.Content.ReadAsStringAsync())));
        Assert.Equal(HttpStatusCode.Redirect, signedIn.StatusCode);
        using var session = await browser.GetAsync(Session);
        Assert.Equal(HttpStatusCode.OK, session.StatusCode);
        return (antiforgery, SetCookies.Of(signedIn, prefix + "conveyor.session"));
    }

    /// <summary>A client that keeps cookies like a browser and trusts this test's certificate, and no other.</summary>
    private HttpClient Browser(Uri address, CookieContainer cookies) => new(new HttpClientHandler
    {
        CookieContainer = cookies,
        AllowAutoRedirect = false,
        ServerCertificateCustomValidationCallback = (_, presented, _, _) => presented?.Thumbprint == _certificate.Thumbprint,
    })
    {
        BaseAddress = address,
        Timeout = TimeSpan.FromSeconds(60),
    };

    private static X509Certificate2 SelfSignedCertificate()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=127.0.0.1", key, HashAlgorithmName.SHA256);
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
    }
}
