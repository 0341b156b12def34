using System.Net;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Security;

/// <summary>
/// A dashboard session ends for good: signing out refuses every saved copy of its cookie, and no
/// activity keeps it past <c>Dashboard:Session:MaxLifetime</c>. A sign-out is logged only for a real session.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class SessionLifetimeTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string DashboardCategory = "Conveyor.Api.Dashboard.DashboardApi";

    private readonly CapturedLogs _logs = new();
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(
            new Dictionary<string, string?>
            {
                ["RateLimiting:Enabled"] = "false",
                [$"Logging:LogLevel:{DashboardCategory}"] = "Information",
            },
            builder => builder.Logging.AddProvider(_logs));
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task After_signing_out_a_saved_copy_of_the_session_cookie_is_refused()
    {
        using var browser = DashboardBrowser.Open(_api.BaseAddress, out var cookies);
        await DashboardBrowser.SignInAsync(browser, TestKeys.Admin);
        var saved = cookies.GetCookieHeader(_api.BaseAddress);
        Assert.Contains("conveyor.session=", saved, StringComparison.Ordinal);
        using (var signOut = DashboardBrowser.SignOut(await DashboardBrowser.CsrfTokenAsync(browser)))
        using (var signedOut = await browser.SendAsync(signOut))
        {
            Assert.Equal(HttpStatusCode.NoContent, signedOut.StatusCode);
        }

        using var replay = new HttpClient(new HttpClientHandler { UseCookies = false, AllowAutoRedirect = false }) { BaseAddress = _api.BaseAddress };
        foreach (var path in new[] { "/dashboard/api/session", "/api/audit" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(path, UriKind.Relative));
            request.Headers.Add("Cookie", saved);
            using var response = await replay.SendAsync(request);
            Assert.True(response.StatusCode == HttpStatusCode.Unauthorized, $"{path}: {response.StatusCode}");
        }

        var signOuts = _logs.Of(LogLevel.Information, DashboardCategory).Where(e => e.EventId.Id == 2403).ToList();
        Assert.Equal($"Dashboard sign-out of {TestKeys.AdminName}", Assert.Single(signOuts).Message);
    }

    [Fact]
    public async Task Signing_in_again_from_a_signed_in_browser_ends_its_earlier_session()
    {
        using var browser = DashboardBrowser.Open(_api.BaseAddress, out var cookies);
        await DashboardBrowser.SignInAsync(browser, TestKeys.Reader);
        var saved = cookies.GetCookieHeader(_api.BaseAddress);

        // The session's own token passes the form's anti-forgery check.
        using (var again = await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative),
            DashboardBrowser.LoginForm(TestKeys.Admin, await DashboardBrowser.CsrfTokenAsync(browser))))
        {
            Assert.Equal(HttpStatusCode.Redirect, again.StatusCode);
        }

        Assert.Equal(HttpStatusCode.Unauthorized, await SessionStatusAsync(saved));
        Assert.Equal(HttpStatusCode.OK, await SessionStatusAsync(cookies.GetCookieHeader(_api.BaseAddress)));
    }

    [Fact]
    public async Task A_key_keeps_no_more_live_sessions_than_its_limit_and_the_oldest_end_first()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:Enabled"] = "false",
            ["Dashboard:Session:MaxSessionsPerKey"] = "2",
        });
        var saved = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            using var browser = DashboardBrowser.Open(api.BaseAddress, out var cookies);
            await DashboardBrowser.SignInAsync(browser, TestKeys.Admin);
            saved.Add(cookies.GetCookieHeader(api.BaseAddress));
        }

        using var reader = DashboardBrowser.Open(api.BaseAddress, out var readerCookies);
        await DashboardBrowser.SignInAsync(reader, TestKeys.Reader);

        Assert.Equal(HttpStatusCode.Unauthorized, await SessionStatusAsync(saved[0], api));
        Assert.Equal(HttpStatusCode.OK, await SessionStatusAsync(saved[1], api));
        Assert.Equal(HttpStatusCode.OK, await SessionStatusAsync(saved[2], api));
        // Another key's sessions are its own.
        Assert.Equal(HttpStatusCode.OK, await SessionStatusAsync(readerCookies.GetCookieHeader(api.BaseAddress), api));
    }

    [Fact]
    public async Task The_pages_own_refreshes_do_not_keep_an_idle_session_alive_but_a_request_of_the_user_does()
    {
        var clock = new MovableClock();
        await using var api = await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false", ["Dashboard:Session:IdleMinutes"] = "10" },
            builder => builder.Services.AddSingleton<TimeProvider>(clock));
        using var idle = DashboardBrowser.Open(api.BaseAddress, out _);
        await DashboardBrowser.SignInAsync(idle, TestKeys.Reader);
        using var active = DashboardBrowser.Open(api.BaseAddress, out _);
        await DashboardBrowser.SignInAsync(active, TestKeys.Reader);

        // Past half the idle limit a request renews the cookie: the user's does, the page's refresh does not.
        clock.Advance(TimeSpan.FromMinutes(6));
        Assert.Equal(HttpStatusCode.OK, await SessionAsync(idle, refresh: true));
        Assert.Equal(HttpStatusCode.OK, await SessionAsync(active, refresh: false));

        clock.Advance(TimeSpan.FromMinutes(5));
        Assert.Equal(HttpStatusCode.Unauthorized, await SessionAsync(idle, refresh: true));
        Assert.Equal(HttpStatusCode.OK, await SessionAsync(active, refresh: false));
    }

    private static async Task<HttpStatusCode> SessionAsync(HttpClient browser, bool refresh)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri("/dashboard/api/session", UriKind.Relative));
        if (refresh)
        {
            request.Headers.Add(Conveyor.Api.Security.AccessControl.RefreshHeader, "1");
        }

        using var response = await browser.SendAsync(request);
        return response.StatusCode;
    }

    [Fact]
    public async Task A_session_ends_at_its_maximum_lifetime_however_active_it_is()
    {
        await using var api = await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false", ["Dashboard:Session:MaxLifetime"] = "00:00:04" });
        using var browser = DashboardBrowser.Open(api.BaseAddress, out _);
        // Read before the sign-in, not after: the session's lifetime counts from its row's insert, during the sign-in,
        // and a sign-in answered more than a second after it (a busy machine) would make a session that ended on
        // time look early.
        var signingIn = DateTime.UtcNow;
        await DashboardBrowser.SignInAsync(browser, TestKeys.Reader);
        using (var first = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        }

        // A request at least every half second: far more active than the 30-minute idle limit asks.
        await Eventually.AssertAsync(async () =>
        {
            using var response = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        }, TimeSpan.FromSeconds(30));

        Assert.True(DateTime.UtcNow - signingIn >= TimeSpan.FromSeconds(3), "The session ended before its lifetime.");
        using var page = await browser.GetAsync(new Uri("/dashboard/", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Redirect, page.StatusCode);
    }

    [Fact]
    public async Task Signing_out_with_only_an_API_key_logs_no_sign_out()
    {
        using var response = await _api.Client.PostAsync(new Uri("/dashboard/logout", UriKind.Relative), null);

        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
        Assert.DoesNotContain(_logs.Of(LogLevel.Information, DashboardCategory), e => e.EventId.Id == 2403);
    }

    /// <summary>What <c>GET /dashboard/api/session</c> answers a request carrying <paramref name="cookies"/> and nothing else.</summary>
    private async Task<HttpStatusCode> SessionStatusAsync(string cookies, RunningApp? api = null)
    {
        using var client = new HttpClient(new HttpClientHandler { UseCookies = false, AllowAutoRedirect = false }) { BaseAddress = (api ?? _api).BaseAddress };
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri("/dashboard/api/session", UriKind.Relative));
        request.Headers.Add("Cookie", cookies);
        using var response = await client.SendAsync(request);
        return response.StatusCode;
    }
}
