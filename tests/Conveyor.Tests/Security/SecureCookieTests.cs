using System.Net;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Security;

/// <summary>
/// Behind a TLS-terminating proxy the Api sees plain HTTP; <c>Dashboard:Session:SecureCookies</c> marks
/// the session and anti-forgery cookies Secure all the same.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class SecureCookieTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:Enabled"] = "false",
            ["Dashboard:Session:SecureCookies"] = "true",
        });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Over_plain_HTTP_the_session_and_antiforgery_cookies_are_still_Secure()
    {
        // A client would not send Secure cookies back over HTTP, so the Cookie header is written by hand, as the proxy's would be.
        using var client = new HttpClient(new HttpClientHandler { UseCookies = false, AllowAutoRedirect = false }) { BaseAddress = _api.BaseAddress };

        using var form = await client.GetAsync(new Uri("/dashboard/login", UriKind.Relative));
        var antiforgery = SetCookie(form, "conveyor.csrf");
        var html = await form.Content.ReadAsStringAsync();
        var token = WebUtility.HtmlDecode(html.Split("name=\"__RequestVerificationToken\" value=\"")[1].Split('"')[0]);

        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri("/dashboard/login", UriKind.Relative))
        {
            Content = DashboardBrowser.LoginForm(TestKeys.Admin, token),
        };
        request.Headers.Add("Cookie", antiforgery.Split(';')[0]);
        using var signedIn = await client.SendAsync(request);

        Assert.Equal(HttpStatusCode.Redirect, signedIn.StatusCode);
        var session = SetCookie(signedIn, "conveyor.session");
        Assert.Contains("; secure", antiforgery, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("; secure", session, StringComparison.OrdinalIgnoreCase);
    }

    private static string SetCookie(HttpResponseMessage response, string name) =>
        Assert.Single(response.Headers.GetValues("Set-Cookie"), c => c.StartsWith(name + "=", StringComparison.Ordinal));
}
