using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.RegularExpressions;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Security;

/// <summary>
/// A form the server cannot read (no multipart boundary, garbage parts, too many or too long fields,
/// a body over Kestrel's limit) is the client's mistake wherever the anti-forgery check meets it: the
/// sign-in form, or any state-changing call carrying the session cookie. It is answered 400 (413 when
/// too large) and logged at no more than debug level, so anonymous clients cannot fill the error log.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed partial class MalformedFormTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Login = "/dashboard/login";

    private readonly CapturedLogs _logs = new();
    private readonly FinishedRequests _finished = new();
    private int _sent;
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false" },
            builder =>
            {
                builder.Logging.AddProvider(_logs);
                builder.Services.AddSingleton<IStartupFilter>(_finished);
            });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    public static TheoryData<string> MalformedForms => new(MalformedForm.Names);

    [Theory]
    [MemberData(nameof(MalformedForms))]
    public async Task A_malformed_sign_in_form_is_a_400_problem_and_no_error_is_logged(string form)
    {
        using var client = NewBrowser(out _);

        using var response = await client.PostAsync(new Uri(Login, UriKind.Relative), MalformedForm.Create(form));

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        await AssertNoErrorLoggedAsync();
    }

    [Fact]
    public async Task A_sign_in_body_over_the_servers_limit_is_a_413_problem_and_no_error_is_logged()
    {
        using var client = NewBrowser(out _);

        using var response = await client.SendAsync(TooLarge(Login));

        await response.AssertProblemAsync(StatusCodes.Status413PayloadTooLarge);
        await AssertNoErrorLoggedAsync();
        // The exception handler clears the response before it writes the problem: the headers are set again.
        Assert.Equal("nosniff", response.Headers.GetValues("X-Content-Type-Options").Single());
        Assert.Equal("DENY", response.Headers.GetValues("X-Frame-Options").Single());
        Assert.Contains("frame-ancestors 'none'", response.Headers.GetValues("Content-Security-Policy").Single(), StringComparison.Ordinal);
        Assert.Equal("no-referrer", response.Headers.GetValues("Referrer-Policy").Single());
    }

    [Theory]
    [MemberData(nameof(MalformedForms))]
    public async Task A_malformed_form_with_the_session_cookie_is_refused_as_a_forgery_and_no_error_is_logged(string form)
    {
        using var browser = await SignedInAsync();

        using var response = await browser.PostAsync(new Uri("/api/jobs/generate-report", UriKind.Relative), MalformedForm.Create(form));

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Contains("anti-forgery", await response.Content.ReadAsStringAsync(), StringComparison.OrdinalIgnoreCase);
        await AssertNoErrorLoggedAsync();
    }

    [Fact]
    public async Task A_body_over_the_servers_limit_with_the_session_cookie_is_a_413_problem_and_no_error_is_logged()
    {
        using var browser = await SignedInAsync();

        using var response = await browser.SendAsync(TooLarge("/api/jobs/generate-report"));

        await response.AssertProblemAsync(StatusCodes.Status413PayloadTooLarge);
        await AssertNoErrorLoggedAsync();
    }

    [Fact]
    public async Task A_well_formed_sign_in_still_signs_in()
    {
        using var browser = await SignedInAsync();

        using var session = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, session.StatusCode);
    }

    /// <summary>Once every request sent has finished (its exception, if any, is logged after the answer).</summary>
    private async Task AssertNoErrorLoggedAsync()
    {
        await _finished.WaitForAsync(Volatile.Read(ref _sent));
        Assert.DoesNotContain(_logs.Entries, e => e.Level >= LogLevel.Error);
    }

    /// <summary>
    /// A form over Kestrel's 30 MB request limit. Sent with <c>Expect: 100-continue</c>, as curl sends a
    /// large body: the server answers from the declared length and the client need not send it all.
    /// </summary>
    private static HttpRequestMessage TooLarge(string path)
    {
        var body = new byte[40 * 1024 * 1024];
        Array.Fill(body, (byte)'a');
        "apiKey="u8.CopyTo(body);
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/x-www-form-urlencoded");
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(path, UriKind.Relative)) { Content = content };
        request.Headers.ExpectContinue = true;
        return request;
    }

    private async Task<HttpClient> SignedInAsync()
    {
        var browser = NewBrowser(out _);
        using var page = await browser.GetAsync(new Uri(Login, UriKind.Relative));
        var token = FormToken().Match(await page.Content.ReadAsStringAsync());
        Assert.True(token.Success, "The sign-in form has no anti-forgery field.");
        using var form = new FormUrlEncodedContent(new Dictionary<string, string>
        {
            ["apiKey"] = TestKeys.Admin,
            ["__RequestVerificationToken"] = WebUtility.HtmlDecode(token.Groups["token"].Value),
        });
        using var signedIn = await browser.PostAsync(new Uri(Login, UriKind.Relative), form);
        Assert.Equal(HttpStatusCode.Redirect, signedIn.StatusCode);
        return browser;
    }

    /// <summary>A client that keeps cookies like a browser and sends no API key.</summary>
    private HttpClient NewBrowser(out CookieContainer cookies)
    {
        cookies = new CookieContainer();
        var handler = new HttpClientHandler { CookieContainer = cookies, AllowAutoRedirect = false };
        return new HttpClient(new Counting(handler, () => Interlocked.Increment(ref _sent)))
        {
            BaseAddress = _api.BaseAddress,
            Timeout = TimeSpan.FromSeconds(60),
        };
    }

    private sealed class Counting(HttpMessageHandler inner, Action sent) : DelegatingHandler(inner)
    {
        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            sent();
            return base.SendAsync(request, cancellationToken);
        }
    }

    [GeneratedRegex("name=\"__RequestVerificationToken\" value=\"(?<token>[^\"]+)\"")]
    private static partial Regex FormToken();

    /// <summary>Form bodies that ASP.NET Core's form reader refuses.</summary>
    private static class MalformedForm
    {
        public const string NoBoundary = "multipart without a boundary";
        public const string GarbageParts = "multipart with garbage for parts";
        public const string TooManyFields = "2000 urlencoded fields";
        public const string FieldTooLong = "a 5 MB urlencoded field";

        public static string[] Names => [NoBoundary, GarbageParts, TooManyFields, FieldTooLong];

        public static ByteArrayContent Create(string name) => name switch
        {
            NoBoundary => Raw("x", "multipart/form-data"),
            GarbageParts => Raw("this is not a multipart body\r\n", "multipart/form-data; boundary=conveyor-boundary"),
            TooManyFields => Raw(string.Join('&', Enumerable.Range(0, 2000).Select(i => $"f{i}=v")), "application/x-www-form-urlencoded"),
            FieldTooLong => Raw("apiKey=" + new string('a', 5 * 1024 * 1024), "application/x-www-form-urlencoded"),
            _ => throw new ArgumentOutOfRangeException(nameof(name), name, null),
        };

        private static ByteArrayContent Raw(string body, string contentType)
        {
            var content = new ByteArrayContent(Encoding.ASCII.GetBytes(body));
            // Unvalidated: a Content-Type without its boundary is the point of one case.
            content.Headers.TryAddWithoutValidation("Content-Type", contentType);
            return content;
        }
    }
}
