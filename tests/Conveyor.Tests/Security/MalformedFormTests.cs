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
/// a body over the server's limit, a charset it cannot decode) is the client's mistake wherever the anti-forgery check meets it: the
/// sign-in form, or any state-changing call carrying the session cookie. It is answered 400 (413 when
/// too large; the sign-in form takes no more than a few KiB, url-encoded only, 415 otherwise) and logged at no more than debug level, so anonymous clients cannot fill the error log.
/// </summary>
[Collection(SecondLaneCollection.Name)]
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

    /// <summary>Each malformed form and what the sign-in answers: only a small url-encoded body is read at all.</summary>
    public static TheoryData<string, int> MalformedSignIns => new()
    {
        { MalformedForm.NoBoundary, StatusCodes.Status415UnsupportedMediaType },
        { MalformedForm.GarbageParts, StatusCodes.Status415UnsupportedMediaType },
        { MalformedForm.TooManyShortFields, StatusCodes.Status400BadRequest },
        { MalformedForm.TooManyFields, StatusCodes.Status413PayloadTooLarge },
        { MalformedForm.FieldTooLong, StatusCodes.Status413PayloadTooLarge },
        { MalformedForm.Utf7, StatusCodes.Status415UnsupportedMediaType },
    };

    [Theory]
    [MemberData(nameof(MalformedSignIns))]
    public async Task A_malformed_sign_in_form_is_a_problem_and_no_error_is_logged(string form, int status)
    {
        using var client = NewBrowser(out _);

        using var response = await client.SendAsync(Post(Login, MalformedForm.Create(form)));

        await response.AssertProblemAsync(status);
        await AssertNoErrorLoggedAsync();
    }

    /// <summary>
    /// Anyone may post the sign-in form: a body larger than a form needs, or of another kind than the form
    /// sends (a multipart one is buffered, its files on disk, to look for the token), is refused before the
    /// server reads it. Sent with <c>Expect: 100-continue</c> and a client that waits for the server's go:
    /// a body the server never asked for was never read.
    /// </summary>
    [Fact]
    public async Task A_large_or_multipart_sign_in_is_refused_before_its_body_is_read()
    {
        using var client = NewBrowser(out _, expectContinue: true);
        var token = await DashboardBrowser.FormTokenAsync(client);
        var multipart = new WatchedContent(Multipart(token, fileBytes: 5 * 1024 * 1024), "multipart/form-data; boundary=conveyor-boundary");
        var urlEncoded = new WatchedContent(UrlEncoded(token, padding: 100 * 1024), "application/x-www-form-urlencoded");
        foreach (var content in new[] { multipart, urlEncoded })
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(Login, UriKind.Relative)) { Content = content };
            request.Headers.ExpectContinue = true;
            using var response = await client.SendAsync(request);

            await response.AssertProblemAsync(StatusCodes.Status413PayloadTooLarge);
            Assert.False(content.Sent, $"The {content.Headers.ContentType} body of {content.Headers.ContentLength} bytes was read.");
        }

        // A small one too: the server may take in what is left of it after answering, to keep the connection.
        using (var small = await client.PostAsync(new Uri(Login, UriKind.Relative),
            new WatchedContent(Multipart(token, fileBytes: 16), "multipart/form-data; boundary=conveyor-boundary")))
        {
            await small.AssertProblemAsync(StatusCodes.Status415UnsupportedMediaType);
        }

        await AssertNoErrorLoggedAsync();
    }

    [Fact]
    public async Task A_sign_in_body_of_no_declared_length_is_cut_off_at_the_forms_limit()
    {
        using var client = NewBrowser(out _);
        var token = await DashboardBrowser.FormTokenAsync(client);
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(Login, UriKind.Relative))
        {
            Content = new WatchedContent(UrlEncoded(token, padding: 100 * 1024), "application/x-www-form-urlencoded"),
        };
        request.Headers.TransferEncodingChunked = true;

        using var response = await client.SendAsync(request);

        await response.AssertProblemAsync(StatusCodes.Status413PayloadTooLarge);
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

        using var response = await browser.SendAsync(Post("/api/jobs/generate-report", MalformedForm.Create(form)));

        if (form == MalformedForm.FieldTooLong)
        {
            // Over the server's limit of any body: refused as the token is looked for in it.
            await response.AssertProblemAsync(StatusCodes.Status413PayloadTooLarge);
        }
        else
        {
            await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
            Assert.Contains("anti-forgery", await response.Content.ReadAsStringAsync(), StringComparison.OrdinalIgnoreCase);
        }

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
    /// A form over the server's 2 MiB request limit (<see cref="Conveyor.Api.ApiApp.MaxRequestBodyBytes"/>). Sent with <c>Expect: 100-continue</c>, as curl sends a
    /// large body: the server answers from the declared length and the client need not send it all.
    /// </summary>
    private static HttpRequestMessage TooLarge(string path)
    {
        var body = new byte[4 * 1024 * 1024];
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

    /// <summary>
    /// A POST of <paramref name="content"/> with <c>Expect: 100-continue</c>, as curl sends a large body: a body
    /// the server refuses unread is then not sent, rather than cut off by the server's close.
    /// </summary>
    private static HttpRequestMessage Post(string path, HttpContent content)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(path, UriKind.Relative)) { Content = content };
        request.Headers.ExpectContinue = true;
        return request;
    }

    /// <summary>A sign-in form with the right key and token, padded with a field of <paramref name="padding"/> bytes.</summary>
    private static byte[] UrlEncoded(string token, int padding) => Encoding.ASCII.GetBytes(
        $"apiKey={TestKeys.Admin}&__RequestVerificationToken={Uri.EscapeDataString(token)}&padding={new string('a', padding)}");

    /// <summary>A multipart sign-in form with the right key and token and a file part of <paramref name="fileBytes"/> bytes.</summary>
    private static byte[] Multipart(string token, int fileBytes)
    {
        static string Field(string name, string value) =>
            $"--conveyor-boundary\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n";
        var head = Field("apiKey", TestKeys.Admin) + Field("__RequestVerificationToken", token)
            + "--conveyor-boundary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"upload.bin\"\r\n"
            + "Content-Type: application/octet-stream\r\n\r\n";
        return [.. Encoding.ASCII.GetBytes(head), .. new byte[fileBytes], .. "\r\n--conveyor-boundary--\r\n"u8];
    }

    /// <summary>A client that keeps cookies like a browser and sends no API key.</summary>
    /// <param name="expectContinue">
    /// Sends a body announced with <c>Expect: 100-continue</c> only once the server asks for it (it asks when it
    /// starts reading), however long that takes.
    /// </param>
    private HttpClient NewBrowser(out CookieContainer cookies, bool expectContinue = false)
    {
        cookies = new CookieContainer();
        var handler = new SocketsHttpHandler
        {
            CookieContainer = cookies,
            AllowAutoRedirect = false,
            Expect100ContinueTimeout = expectContinue ? TimeSpan.FromSeconds(60) : TimeSpan.FromSeconds(1),
        };
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

    /// <summary>A body that records whether the client sent it.</summary>
    private sealed class WatchedContent : HttpContent
    {
        private readonly byte[] _body;
        private int _sent;

        public WatchedContent(byte[] body, string contentType)
        {
            _body = body;
            Headers.TryAddWithoutValidation("Content-Type", contentType);
        }

        public bool Sent => Volatile.Read(ref _sent) != 0;

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            Volatile.Write(ref _sent, 1);
            await stream.WriteAsync(_body);
        }

        protected override bool TryComputeLength(out long length)
        {
            length = _body.Length;
            return true;
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
        public const string TooManyShortFields = "2000 urlencoded fields in 4 KB";
        public const string FieldTooLong = "a 5 MB urlencoded field";
        public const string Utf7 = "urlencoded in UTF-7, which .NET refuses to decode";

        public static string[] Names => [NoBoundary, GarbageParts, TooManyFields, TooManyShortFields, FieldTooLong, Utf7];

        public static ByteArrayContent Create(string name) => name switch
        {
            NoBoundary => Raw("x", "multipart/form-data"),
            GarbageParts => Raw("this is not a multipart body\r\n", "multipart/form-data; boundary=conveyor-boundary"),
            TooManyFields => Raw(string.Join('&', Enumerable.Range(0, 2000).Select(i => $"f{i}=v")), "application/x-www-form-urlencoded"),
            TooManyShortFields => Raw(string.Join('&', Enumerable.Repeat("f", 2000)), "application/x-www-form-urlencoded"),
            FieldTooLong => Raw("apiKey=" + new string('a', 5 * 1024 * 1024), "application/x-www-form-urlencoded"),
            Utf7 => Raw("apiKey=x", "application/x-www-form-urlencoded; charset=utf-7"),
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
