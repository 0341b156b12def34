using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Security;

/// <summary>The dashboard's cookie session: sign-in, cookie flags, CSRF on every state-changing call, scopes, sign-out.</summary>
[Collection(SecondLaneCollection.Name)]
public sealed partial class SessionTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Move = $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move";

    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
        _api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false" });
        await using var broker = await TestBroker.ConnectAsync(fixture);
        await broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task A_cookie_authenticated_move_needs_the_antiforgery_token_and_then_records_the_principal()
    {
        using var browser = await SignedInAsync(TestKeys.Admin);
        var token = (await SessionAsync(browser)).GetProperty("csrfToken").GetString()!;

        using (var without = await browser.PostAsync(new Uri(Move, UriKind.Relative), DryRun()))
        {
            Assert.Equal(HttpStatusCode.BadRequest, without.StatusCode);
            Assert.Equal("application/problem+json", without.Content.Headers.ContentType?.MediaType);
        }

        using (var forged = Post(Move, "not-the-token"))
        using (var response = await browser.SendAsync(forged))
        {
            Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        }

        using var request = Post(Move, token);
        using var accepted = await browser.SendAsync(request);
        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        var operationId = (await accepted.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("operationId").GetGuid();

        var operation = await ErrorQueueKit.WaitForOperationAsync(browser, operationId);
        Assert.Equal(TestKeys.AdminName, operation.GetProperty("requestedBy").GetString());
        await using var broker = await TestBroker.ConnectAsync(fixture);
        Assert.Equal(1u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }

    [Fact]
    public async Task The_token_is_needed_for_any_state_changing_call_but_not_with_an_API_key()
    {
        using var browser = await SignedInAsync(TestKeys.Admin);

        using var cancel = await browser.DeleteAsync(new Uri($"/api/jobs/{Guid.NewGuid()}", UriKind.Relative));
        using var submit = await browser.PostAsync(new Uri("/api/jobs/charge-payment", UriKind.Relative), DryRun());
        using var viaKey = await _api.Client.PostAsync(new Uri(Move, UriKind.Relative), DryRun());

        Assert.Equal(HttpStatusCode.BadRequest, cancel.StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, submit.StatusCode);
        Assert.Equal("application/problem+json", submit.Content.Headers.ContentType?.MediaType);
        Assert.Contains("anti-forgery", await submit.Content.ReadAsStringAsync(), StringComparison.OrdinalIgnoreCase);
        Assert.Equal(HttpStatusCode.Accepted, viaKey.StatusCode);
    }

    [Fact]
    public async Task Signing_in_sets_a_strict_http_only_session_cookie_with_the_keys_scopes()
    {
        using var browser = NewBrowser(out var cookies);
        var form = await LoginFormTokenAsync(browser);

        using var response = await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative), LoginForm(TestKeys.Reader, form));

        Assert.Equal(HttpStatusCode.Redirect, response.StatusCode);
        Assert.Equal("/dashboard/", response.Headers.Location?.OriginalString);
        var setCookie = Assert.Single(response.Headers.GetValues("Set-Cookie"), c => c.StartsWith("conveyor.session=", StringComparison.Ordinal));
        Assert.Contains("httponly", setCookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", setCookie, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(TestKeys.Reader, setCookie, StringComparison.Ordinal);
        Assert.NotNull(cookies.GetCookies(_api.BaseAddress)["conveyor.session"]);

        var session = await SessionAsync(browser);
        Assert.Equal(TestKeys.ReaderName, session.GetProperty("name").GetString());
        Assert.Equal(["jobs:read"], session.GetProperty("scopes").EnumerateArray().Select(s => s.GetString()));
        using var jobs = await browser.GetAsync(new Uri("/api/jobs", UriKind.Relative));
        using var errorQueues = await browser.GetAsync(new Uri("/api/error-queues", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, jobs.StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, errorQueues.StatusCode);
    }

    [Fact]
    public async Task The_sign_in_form_sent_again_by_a_signed_in_browser_goes_to_the_dashboard_and_changes_nothing()
    {
        using var browser = NewBrowser(out var cookies);
        var form = await LoginFormTokenAsync(browser);
        using (var first = await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative), LoginForm(TestKeys.Reader, form)))
        {
            Assert.Equal(HttpStatusCode.Redirect, first.StatusCode);
        }

        var session = cookies.GetCookies(_api.BaseAddress)["conveyor.session"]?.Value;

        // The same form again (the back button), and with another key, to the path routing takes it at with a
        // trailing slash too: no JSON error, no new session.
        foreach (var (key, path) in new[] { (TestKeys.Reader, "/dashboard/login"), (TestKeys.Admin, "/dashboard/login"), (TestKeys.Admin, "/dashboard/login/") })
        {
            using var again = await browser.PostAsync(new Uri(path, UriKind.Relative), LoginForm(key, form));
            Assert.Equal(HttpStatusCode.SeeOther, again.StatusCode);
            Assert.Equal("/dashboard/", again.Headers.Location?.OriginalString);
            Assert.False(again.Headers.Contains("Set-Cookie"));
        }

        Assert.Equal(session, cookies.GetCookies(_api.BaseAddress)["conveyor.session"]?.Value);
        Assert.Equal(TestKeys.ReaderName, (await SessionAsync(browser)).GetProperty("name").GetString());
    }

    [Fact]
    public async Task A_wrong_key_or_a_form_without_its_token_signs_nobody_in()
    {
        using var browser = NewBrowser(out var cookies);
        var form = await LoginFormTokenAsync(browser);

        using var wrongKey = await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative), LoginForm("not-a-configured-key-0123456789abcdef", form));
        using var noToken = await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative),
            new FormUrlEncodedContent(new Dictionary<string, string> { ["apiKey"] = TestKeys.Admin }));

        Assert.Equal(HttpStatusCode.Unauthorized, wrongKey.StatusCode);
        Assert.DoesNotContain("not-a-configured-key", await wrongKey.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.BadRequest, noToken.StatusCode);
        Assert.Null(cookies.GetCookies(_api.BaseAddress)["conveyor.session"]);
        using var session = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, session.StatusCode);
    }

    [Fact]
    public async Task Signing_out_ends_the_session()
    {
        using var browser = await SignedInAsync(TestKeys.Admin);
        var token = (await SessionAsync(browser)).GetProperty("csrfToken").GetString()!;

        using var request = Post("/dashboard/logout", token);
        using var signedOut = await browser.SendAsync(request);
        using var after = await browser.GetAsync(new Uri("/api/error-queues", UriKind.Relative));
        using var page = await browser.GetAsync(new Uri("/dashboard/", UriKind.Relative));

        Assert.Equal(HttpStatusCode.NoContent, signedOut.StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, after.StatusCode);
        Assert.Equal(HttpStatusCode.Redirect, page.StatusCode);
        Assert.Equal("/dashboard/login", page.Headers.Location?.OriginalString);
    }

    [Fact]
    public async Task A_token_taken_before_the_keys_scopes_changed_still_signs_out()
    {
        // The page keeps the token it read at start; a rollout that changes its key's scopes refreshes the
        // session's claims. The token is bound to the session, not to those claims, or signing out failed.
        const string key = "rescoped-key-0123456789abcdefghij";
        Dictionary<string, string?> Settings(string scopes) => new()
        {
            ["RateLimiting:Enabled"] = "false",
            ["Auth:ApiKeys:rescoped:Name"] = "rescoped",
            ["Auth:ApiKeys:rescoped:Key"] = key,
            ["Auth:ApiKeys:rescoped:Scopes"] = scopes,
        };
        // One browser: its cookies go to either replica (cookies do not name a port).
        var cookies = new System.Net.CookieContainer();
        HttpClient Browser(Uri api) => new(new HttpClientHandler { CookieContainer = cookies, AllowAutoRedirect = false }) { BaseAddress = api };
        string token;
        await using (var before = await fixture.StartApiAsync(Settings("jobs:read")))
        {
            using var first = Browser(before.BaseAddress);
            await DashboardBrowser.SignInAsync(first, key);
            token = (await SessionAsync(first)).GetProperty("csrfToken").GetString()!;
        }

        await using var after = await fixture.StartApiAsync(Settings("jobs:read jobs:publish"));
        using var browser = Browser(after.BaseAddress);
        Assert.Contains("jobs:publish", (await SessionAsync(browser)).GetProperty("scopes").EnumerateArray().Select(s => s.GetString()));

        using var request = Post("/dashboard/logout", token);
        using var signedOut = await browser.SendAsync(request);

        Assert.Equal(HttpStatusCode.NoContent, signedOut.StatusCode);
        using var gone = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, gone.StatusCode);
    }

    [Fact]
    public async Task Dashboard_pages_carry_a_strict_content_security_policy()
    {
        using var browser = await SignedInAsync(TestKeys.Admin);

        using var page = await browser.GetAsync(new Uri("/dashboard/", UriKind.Relative));
        using var login = await browser.GetAsync(new Uri("/dashboard/login", UriKind.Relative));
        using var anonymousLogin = await NewBrowser(out _).GetAsync(new Uri("/dashboard/login", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        var html = await page.Content.ReadAsStringAsync();
        Assert.Contains("<script src=\"/dashboard/app.js\"", html, StringComparison.Ordinal);
        Assert.DoesNotMatch(InlineScript(), html);
        foreach (var response in new[] { page, anonymousLogin })
        {
            var policy = Assert.Single(response.Headers.GetValues("Content-Security-Policy"));
            Assert.Contains("default-src 'self'", policy, StringComparison.Ordinal);
            Assert.Contains("frame-ancestors 'none'", policy, StringComparison.Ordinal);
            Assert.DoesNotContain("unsafe-inline", policy, StringComparison.Ordinal);
            Assert.Equal("nosniff", Assert.Single(response.Headers.GetValues("X-Content-Type-Options")));
        }

        // Signed in already: the form is skipped.
        Assert.Equal(HttpStatusCode.Redirect, login.StatusCode);
    }

    private async Task<HttpClient> SignedInAsync(string key)
    {
        var browser = NewBrowser(out _);
        var token = await LoginFormTokenAsync(browser);
        using var response = await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative), LoginForm(key, token));
        Assert.Equal(HttpStatusCode.Redirect, response.StatusCode);
        return browser;
    }

    /// <summary>A client that keeps cookies like a browser and sends no API key.</summary>
    private HttpClient NewBrowser(out CookieContainer cookies)
    {
        cookies = new CookieContainer();
        return new HttpClient(new HttpClientHandler { CookieContainer = cookies, AllowAutoRedirect = false })
        {
            BaseAddress = _api.BaseAddress,
            Timeout = TimeSpan.FromSeconds(60),
        };
    }

    private static async Task<string> LoginFormTokenAsync(HttpClient browser)
    {
        using var response = await browser.GetAsync(new Uri("/dashboard/login", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var match = FormToken().Match(await response.Content.ReadAsStringAsync());
        Assert.True(match.Success, "The sign-in form has no anti-forgery field.");
        return WebUtility.HtmlDecode(match.Groups["token"].Value);
    }

    private static FormUrlEncodedContent LoginForm(string key, string token) =>
        new(new Dictionary<string, string> { ["apiKey"] = key, ["__RequestVerificationToken"] = token });

    private static async Task<JsonElement> SessionAsync(HttpClient browser)
    {
        using var response = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await response.Content.ReadFromJsonAsync<JsonElement>();
    }

    private static HttpRequestMessage Post(string path, string token)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(path, UriKind.Relative)) { Content = DryRun() };
        request.Headers.Add("X-CSRF-TOKEN", token);
        return request;
    }

    private static StringContent DryRun() => new("""{"dryRun":true}""", Encoding.UTF8, "application/json");

    [GeneratedRegex("name=\"__RequestVerificationToken\" value=\"(?<token>[^\"]+)\"")]
    private static partial Regex FormToken();

    [GeneratedRegex(@"<script(?![^>]*\bsrc=)[^>]*>")]
    private static partial Regex InlineScript();
}
