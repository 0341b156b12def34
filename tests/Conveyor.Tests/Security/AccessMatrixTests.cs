using System.Net;
using System.Text;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Security;

/// <summary>
/// Every endpoint the Api maps (read from its <see cref="EndpointDataSource"/>, so a new endpoint
/// cannot be forgotten) answered for an anonymous caller and for keys of each scope.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class AccessMatrixTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    /// <summary>Who may call an endpoint.</summary>
    public enum Access
    {
        Anyone,
        AnyKey,
        JobsRead,
        JobsPublish,
        Admin,
    }

    /// <summary>The expected access of each endpoint, by method and route pattern. An endpoint missing here fails the test.</summary>
    private static readonly Dictionary<string, Access> Expected = new(StringComparer.Ordinal)
    {
        ["GET /health/live"] = Access.Anyone,
        ["GET /health/ready"] = Access.Anyone,
        ["GET /metrics"] = Access.Anyone,
        ["GET /openapi/{documentName}.json"] = Access.Anyone,
        ["POST /api/jobs/{kind}"] = Access.JobsPublish,
        ["POST /api/jobs/{kind}/batch"] = Access.JobsPublish,
        ["DELETE /api/jobs/{jobId}"] = Access.JobsPublish,
        ["POST /api/jobs/{jobId}/run-now"] = Access.JobsPublish,
        ["POST /api/jobs/run-now"] = Access.JobsPublish,
        ["GET /api/jobs/"] = Access.JobsRead,
        ["GET /api/jobs/{jobId}"] = Access.JobsRead,
        ["GET /api/jobs/{jobId}/result"] = Access.JobsRead,
        ["GET /api/error-queues/"] = Access.Admin,
        ["GET /api/error-queues/{queue}/messages"] = Access.Admin,
        ["GET /api/error-queues/{queue}/groups"] = Access.Admin,
        ["POST /api/error-queues/{queue}/move"] = Access.Admin,
        ["POST /api/error-queues/{queue}/purge"] = Access.Admin,
        ["GET /api/operations/"] = Access.Admin,
        ["GET /api/operations/{operationId}"] = Access.Admin,
        ["GET /api/audit"] = Access.Admin,
        ["GET /dashboard/login"] = Access.Anyone,
        ["POST /dashboard/login"] = Access.Anyone,
        ["POST /dashboard/logout"] = Access.AnyKey,
        ["GET /dashboard/"] = Access.AnyKey,
        ["GET /dashboard/app.js"] = Access.Anyone,
        ["GET /dashboard/app.css"] = Access.Anyone,
        ["GET /dashboard/api/session"] = Access.AnyKey,
        ["GET /dashboard/api/overview"] = Access.JobsRead,
    };

    /// <summary>Values for route parameters, so each endpoint is reached for real.</summary>
    private static readonly Dictionary<string, string> RouteValues = new(StringComparer.Ordinal)
    {
        ["kind"] = "charge-payment",
        ["jobId"] = "0b7f3c52-95a4-4d3e-9f57-6a2d8c1e0f11",
        ["operationId"] = "0b7f3c52-95a4-4d3e-9f57-6a2d8c1e0f12",
        ["queue"] = "charge-payment_error",
        ["documentName"] = "v1",
    };

    private static readonly (string Name, string? Key, Access[] Grants)[] Callers =
    [
        ("anonymous", null, []),
        ("unrelated scope", TestKeys.Unrelated, [Access.AnyKey]),
        ("jobs:read", TestKeys.Reader, [Access.AnyKey, Access.JobsRead]),
        ("jobs:publish", TestKeys.Publisher, [Access.AnyKey, Access.JobsPublish]),
        ("admin", TestKeys.Admin, [Access.AnyKey, Access.JobsRead, Access.JobsPublish, Access.Admin]),
    ];

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false" });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Every_endpoint_answers_each_caller_as_its_scope_allows()
    {
        var endpoints = MappedEndpoints();
        var unclassified = endpoints.Where(e => !Expected.ContainsKey(e)).ToList();
        Assert.True(unclassified.Count == 0,
            $"Endpoints without an expected access (add them to {nameof(Expected)}): {string.Join(", ", unclassified)}");
        Assert.Empty(Expected.Keys.Except(endpoints));
        // A server error counts as a failure below: first let the bus connect, as readiness waits for it.
        await _api.WaitUntilReadyAsync();

        var failures = new List<string>();
        foreach (var endpoint in endpoints)
        {
            var access = Expected[endpoint];
            foreach (var (name, key, grants) in Callers)
            {
                using var client = Client(key);
                using var response = await SendAsync(client, endpoint);
                var status = (int)response.StatusCode;
                var allowed = access == Access.Anyone || grants.Contains(access);
                var expected = allowed ? "not 401/403, and no server error" : key is null ? "401" : "403";
                var ok = allowed
                    ? status is not (StatusCodes.Status401Unauthorized or StatusCodes.Status403Forbidden) and < StatusCodes.Status500InternalServerError
                    : status == (key is null ? StatusCodes.Status401Unauthorized : StatusCodes.Status403Forbidden)
                        // A page sends a signed-out browser to the sign-in form instead.
                        || (key is null && endpoint == "GET /dashboard/" && IsRedirectToLogin(response));
                if (!ok)
                {
                    failures.Add($"{endpoint} as {name}: {status}, expected {expected}");
                }
            }
        }

        Assert.True(failures.Count == 0, string.Join(Environment.NewLine, failures));
    }

    [Theory]
    [InlineData("/health/live")]
    [InlineData("/health/ready")]
    [InlineData("/metrics")]
    [InlineData("/openapi/v1.json")]
    public async Task Probes_scrapes_and_the_API_description_are_open_even_with_a_bad_key(string path)
    {
        using var unknown = Client("not-a-configured-key-0123456789abcdef");

        // Readiness waits for the bus to connect after the start.
        await Eventually.AssertAsync(async () =>
        {
            using var response = await unknown.GetAsync(new Uri(path, UriKind.Relative));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        });
    }

    [Fact]
    public async Task An_unknown_key_is_401_even_where_no_scope_is_needed()
    {
        using var unknown = Client("not-a-configured-key-0123456789abcdef");

        using var response = await unknown.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Contains(response.Headers.WwwAuthenticate, h => h.Scheme == "Bearer");
    }

    [Theory]
    [InlineData("Bearer " + TestKeys.Admin, HttpStatusCode.Unauthorized)] // two keys: which one counts would be a guess
    [InlineData("Bearer " + TestKeys.Reader, HttpStatusCode.OK)] // the same key twice
    [InlineData("Basic cHJveHk6c2VjcmV0", HttpStatusCode.OK)] // a proxy's own credentials are not a key
    [InlineData("Bearer", HttpStatusCode.Unauthorized)] // a Bearer header without its key
    public async Task A_key_in_both_headers_must_be_the_same_key(string authorization, HttpStatusCode expected)
    {
        using var client = Client(TestKeys.Reader);
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri("/api/jobs", UriKind.Relative));
        request.Headers.TryAddWithoutValidation("Authorization", authorization);

        using var response = await client.SendAsync(request);

        Assert.Equal(expected, response.StatusCode);
    }

    [Theory]
    [InlineData("Basic cHJveHk6c2VjcmV0", "Bearer " + TestKeys.Admin)] // another key beside a proxy's credentials
    [InlineData("Bearer " + TestKeys.Reader, "Bearer " + TestKeys.Admin)]
    public async Task A_key_among_several_authorization_headers_is_not_passed_over_for_the_other_header(string first, string second)
    {
        // Two header lines, as a client or a proxy may send them (HttpClient would fold them into one).
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(_api.BaseAddress.Host, _api.BaseAddress.Port);
        await using var stream = tcp.GetStream();
        var request = $"GET /api/jobs HTTP/1.1\r\nHost: {_api.BaseAddress.Authority}\r\nX-Api-Key: {TestKeys.Reader}\r\n"
            + $"Authorization: {first}\r\nAuthorization: {second}\r\nConnection: close\r\n\r\n";
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request));
        using var reader = new StreamReader(stream, Encoding.ASCII);

        var statusLine = await reader.ReadLineAsync();

        Assert.StartsWith("HTTP/1.1 401 ", statusLine, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("/api/error-queues")]
    [InlineData("/api/jobs")]
    [InlineData("/api/audit")]
    public async Task Answers_with_queue_contents_or_jobs_are_never_cached(string path)
    {
        using var admin = Client(TestKeys.Admin);

        using var response = await admin.GetAsync(new Uri(path, UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.True(response.Headers.CacheControl?.NoStore, $"{path}: Cache-Control {response.Headers.CacheControl}");
    }

    [Fact]
    public async Task Problem_answers_carry_no_stack_trace_and_every_answer_forbids_sniffing_and_framing()
    {
        using var anonymous = Client(null);

        using var response = await anonymous.GetAsync(new Uri("/api/jobs", UriKind.Relative));

        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        Assert.DoesNotContain(" at ", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal("nosniff", Assert.Single(response.Headers.GetValues("X-Content-Type-Options")));
        Assert.Contains("frame-ancestors 'none'", Assert.Single(response.Headers.GetValues("Content-Security-Policy")), StringComparison.Ordinal);
    }

    private List<string> MappedEndpoints() =>
    [
        .. _api.Services.GetRequiredService<EndpointDataSource>().Endpoints
            .OfType<RouteEndpoint>()
            .SelectMany(e => (e.Metadata.GetMetadata<IHttpMethodMetadata>()?.HttpMethods ?? ["GET"])
                .Select(method => $"{method} {Normalise(e.RoutePattern.RawText)}"))
            .Distinct(StringComparer.Ordinal)
            .Order(StringComparer.Ordinal),
    ];

    /// <summary>Groups write their prefix and an empty pattern as <c>/prefix/</c> or <c>/prefix</c>; one spelling is enough.</summary>
    private static string Normalise(string? pattern)
    {
        var text = "/" + (pattern ?? "").TrimStart('/');
        return text is "/api/jobs" or "/dashboard" or "/api/error-queues" or "/api/operations" ? text + "/" : text;
    }

    private static Task<HttpResponseMessage> SendAsync(HttpClient client, string endpoint)
    {
        var (method, pattern) = (endpoint[..endpoint.IndexOf(' ', StringComparison.Ordinal)], endpoint[(endpoint.IndexOf(' ', StringComparison.Ordinal) + 1)..]);
        var path = System.Text.RegularExpressions.Regex.Replace(pattern, @"\{(?<name>[^}:?]+)[^}]*\}", match =>
            RouteValues.TryGetValue(match.Groups["name"].Value, out var value)
                ? value
                : throw new InvalidOperationException($"Add a value for the route parameter '{match.Groups["name"].Value}' of {endpoint}."));
        var request = new HttpRequestMessage(new HttpMethod(method), new Uri(path, UriKind.Relative));
        if (method is "POST" or "PUT" or "PATCH")
        {
            // Valid enough to get past authorization, harmless if it gets further: a dry run, or a job that fails validation.
            request.Content = new StringContent("""{"dryRun":true}""", Encoding.UTF8, "application/json");
        }

        return client.SendAsync(request);
    }

    private static bool IsRedirectToLogin(HttpResponseMessage response) =>
        response.StatusCode == HttpStatusCode.Redirect && response.Headers.Location?.OriginalString.StartsWith("/dashboard/login", StringComparison.Ordinal) == true;

    private HttpClient Client(string? key)
    {
        var client = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = false })
        {
            BaseAddress = _api.BaseAddress,
            Timeout = TimeSpan.FromSeconds(60),
        };
        if (key is not null)
        {
            client.DefaultRequestHeaders.Add("X-Api-Key", key);
        }

        return client;
    }
}
