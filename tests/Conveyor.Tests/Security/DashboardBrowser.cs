using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Conveyor.Tests.Security;

/// <summary>A client that signs in to the dashboard like a browser: it keeps cookies, sends no API key and follows no redirects.</summary>
internal static partial class DashboardBrowser
{
    public static HttpClient Open(Uri baseAddress, out CookieContainer cookies)
    {
        cookies = new CookieContainer();
        return new HttpClient(new HttpClientHandler { CookieContainer = cookies, AllowAutoRedirect = false })
        {
            BaseAddress = baseAddress,
            Timeout = TimeSpan.FromSeconds(60),
        };
    }

    public static async Task SignInAsync(HttpClient browser, string key)
    {
        using var response = await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative), LoginForm(key, await FormTokenAsync(browser)));
        Assert.Equal(HttpStatusCode.Redirect, response.StatusCode);
    }

    /// <summary>The token that state-changing calls must send, from <c>GET /dashboard/api/session</c>.</summary>
    public static async Task<string> CsrfTokenAsync(HttpClient browser)
    {
        using var response = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("csrfToken").GetString()!;
    }

    public static HttpRequestMessage SignOut(string csrfToken)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri("/dashboard/logout", UriKind.Relative));
        request.Headers.Add("X-CSRF-TOKEN", csrfToken);
        return request;
    }

    /// <summary>The anti-forgery token of the sign-in form (its cookie stays in the client).</summary>
    public static async Task<string> FormTokenAsync(HttpClient browser)
    {
        using var response = await browser.GetAsync(new Uri("/dashboard/login", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return FormToken(await response.Content.ReadAsStringAsync());
    }

    /// <summary>The anti-forgery token in the sign-in form's HTML.</summary>
    public static string FormToken(string html)
    {
        var match = FormTokenField().Match(html);
        Assert.True(match.Success, "The sign-in form has no anti-forgery field.");
        return WebUtility.HtmlDecode(match.Groups["token"].Value);
    }

    public static FormUrlEncodedContent LoginForm(string key, string token) =>
        new(new Dictionary<string, string> { ["apiKey"] = key, ["__RequestVerificationToken"] = token });

    [GeneratedRegex("name=\"__RequestVerificationToken\" value=\"(?<token>[^\"]+)\"")]
    private static partial Regex FormTokenField();
}
