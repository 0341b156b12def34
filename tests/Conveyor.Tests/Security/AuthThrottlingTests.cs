using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using Conveyor.Api.Security;
using Conveyor.Tests.Infrastructure;
using Conveyor.Tests.Observability;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Security;

/// <summary>
/// Failed authentication is throttled per client address (ADR 0003 decision 11): the sign-in form and key
/// headers each lock an address out after a few unknown keys; from then until the lockout ends, an unknown
/// key from it gets 429 with Retry-After instead of 401, while a valid key is accepted as ever (keys are
/// long and random, and behind the ingress every client shares an address). Clients connect from distinct
/// loopback addresses (127.0.0.1, 127.0.0.2, ...), and the Api's clock is one the test moves forward.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class AuthThrottlingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string WrongKey = "not-a-configured-key-0123456789abcdef";
    private const string Attacker = "127.0.0.1";
    private const string Bystander = "127.0.0.2";
    private const string DashboardCategory = "Conveyor.Api.Dashboard.DashboardApi";

    private readonly MovableClock _clock = new();
    private readonly CapturedLogs _logs = new();
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(
            new Dictionary<string, string?>
            {
                ["RateLimiting:Enabled"] = "false",
                ["Auth:Throttling:SignIn:MaxFailures"] = "3",
                ["Auth:Throttling:SignIn:Window"] = "00:15:00",
                ["Auth:Throttling:SignIn:Lockout"] = "00:01:00",
                ["Auth:Throttling:SignIn:MaxLockout"] = "00:10:00",
                ["Auth:Throttling:ApiKeys:MaxFailures"] = "3",
                ["Auth:Throttling:ApiKeys:Window"] = "00:05:00",
                ["Auth:Throttling:ApiKeys:Lockout"] = "00:00:30",
                ["Auth:Throttling:ApiKeys:MaxLockout"] = "00:10:00",
            },
            builder =>
            {
                builder.Services.AddSingleton<TimeProvider>(_clock);
                builder.Logging.AddProvider(_logs);
            });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Failed_sign_ins_lock_the_address_out_for_unknown_keys_while_the_right_key_still_signs_in()
    {
        using var attacker = Browser(Attacker);
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(attacker, WrongKey));
        }

        using (var locked = await PostSignInAsync(attacker, WrongKey))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, locked.StatusCode);
            Assert.InRange(locked.Headers.RetryAfter?.Delta ?? TimeSpan.Zero, TimeSpan.FromSeconds(1), TimeSpan.FromMinutes(1));
            Assert.Contains("Too many failed sign-ins", await locked.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            Assert.Null(locked.Headers.Location);
        }

        // The right key signs in from the locked-out address, and changes nothing about the lockout.
        using (var operator_ = Browser(Attacker))
        {
            Assert.Equal(HttpStatusCode.Redirect, await SignInAsync(operator_, TestKeys.Admin));
        }

        // Unknown keys are still refused, and the refusals neither extend the lockout nor log again.
        _clock.Advance(TimeSpan.FromSeconds(30));
        using (var locked = await PostSignInAsync(attacker, WrongKey))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, locked.StatusCode);
            Assert.InRange(locked.Headers.RetryAfter?.Delta ?? TimeSpan.Zero, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30));
        }

        using (var bystander = Browser(Bystander))
        {
            Assert.Equal(HttpStatusCode.Redirect, await SignInAsync(bystander, TestKeys.Admin));
        }

        _clock.Advance(TimeSpan.FromSeconds(31));
        Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(attacker, WrongKey));

        Assert.Single(_logs.Of(LogLevel.Warning, typeof(AuthThrottle).FullName!));
        // The three that locked the address out and the one after it ended; none of the throttled ones.
        Assert.Equal(4, _logs.Of(LogLevel.Warning, DashboardCategory).Count(entry => entry.EventId.Id == 2402));
        var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(2, PrometheusText.Sum(metrics, "conveyor_api_auth_throttled_total", "kind=\"signin\""));
        Assert.Equal(1, PrometheusText.Sum(metrics, "conveyor_api_auth_lockouts_total", "kind=\"signin\""));
    }

    [Fact]
    public async Task A_lockout_ends_after_its_length_and_a_second_lockout_lasts_twice_as_long()
    {
        using var browser = Browser(Attacker);
        for (var i = 0; i < 3; i++)
        {
            await SignInAsync(browser, WrongKey);
        }

        Assert.Equal(HttpStatusCode.TooManyRequests, await SignInAsync(browser, WrongKey));

        _clock.Advance(TimeSpan.FromSeconds(61));
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(browser, WrongKey));
        }

        using (var locked = await PostSignInAsync(browser, WrongKey))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, locked.StatusCode);
            Assert.InRange(locked.Headers.RetryAfter?.Delta ?? TimeSpan.Zero, TimeSpan.FromSeconds(61), TimeSpan.FromMinutes(2));
        }

        // However long the lockout, the right key signs in.
        using var operator_ = Browser(Attacker);
        Assert.Equal(HttpStatusCode.Redirect, await SignInAsync(operator_, TestKeys.Admin));
    }

    [Fact]
    public async Task A_lockout_is_forgotten_a_window_after_it_ends()
    {
        using var browser = Browser(Attacker);
        for (var i = 0; i < 3; i++)
        {
            await SignInAsync(browser, WrongKey);
        }

        // The table is swept (by another address's failure) a moment before the entry expires, so the
        // entry is still there, expired, at the next failure.
        _clock.Advance(TimeSpan.FromMinutes(1) + TimeSpan.FromMinutes(15) - TimeSpan.FromSeconds(2));
        using (var bystander = Browser(Bystander))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(bystander, WrongKey));
        }

        _clock.Advance(TimeSpan.FromSeconds(3));
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(browser, WrongKey));
        }

        // A first lockout again, not a doubled one; the right key signs in all the same.
        using (var locked = await PostSignInAsync(browser, WrongKey))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, locked.StatusCode);
            Assert.InRange(locked.Headers.RetryAfter?.Delta ?? TimeSpan.Zero, TimeSpan.FromSeconds(1), TimeSpan.FromMinutes(1));
        }

        using var operator_ = Browser(Attacker);
        Assert.Equal(HttpStatusCode.Redirect, await SignInAsync(operator_, TestKeys.Admin));
    }

    [Fact]
    public async Task A_valid_sign_in_between_failures_does_not_reset_the_addresss_count()
    {
        // Else anyone holding one key (a reader's, say) could guess for another without limit.
        using var browser = Browser(Attacker);
        Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(browser, WrongKey));
        Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(browser, WrongKey));
        Assert.Equal(HttpStatusCode.Redirect, await SignInAsync(browser, TestKeys.Reader));

        using var next = Browser(Attacker);
        Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(next, WrongKey));
        Assert.Equal(HttpStatusCode.TooManyRequests, await SignInAsync(next, WrongKey));
        Assert.Equal(HttpStatusCode.Redirect, await SignInAsync(next, TestKeys.Admin));
    }

    [Fact]
    public async Task Unknown_API_keys_lock_the_address_out_for_unknown_keys_while_valid_keys_still_work()
    {
        using var guesser = Client(Attacker);
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, await GetJobsAsync(guesser, WrongKey));
        }

        using (var locked = await SendJobsAsync(guesser, WrongKey))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, locked.StatusCode);
            Assert.InRange(locked.Headers.RetryAfter?.Delta ?? TimeSpan.Zero, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(30));
            Assert.Equal("application/problem+json", locked.Content.Headers.ContentType?.MediaType);
            // Its own problem type, which the CLI tells from the backpressure's 429 by (CliTests).
            using var problem = System.Text.Json.JsonDocument.Parse(await locked.Content.ReadAsStringAsync());
            Assert.Equal(ApiKeyAuthenticationHandler.LockoutProblemType, problem.RootElement.GetProperty("type").GetString());
            Assert.Equal(ApiKeyAuthenticationHandler.LockoutProblemType, Conveyor.Cli.ConveyorClient.KeyLockoutProblemType);
        }

        // A service behind the same address (the ingress's, say) is not locked out with the guesser.
        Assert.Equal(HttpStatusCode.OK, await GetJobsAsync(guesser, TestKeys.Admin));
        Assert.Equal(HttpStatusCode.OK, await GetJobsAsync(guesser, TestKeys.Reader, bearer: true));
        Assert.Equal(HttpStatusCode.TooManyRequests, await GetJobsAsync(guesser, WrongKey, bearer: true));

        // Another address: its failures are its own.
        using var service = Client(Bystander);
        Assert.Equal(HttpStatusCode.OK, await GetJobsAsync(service, TestKeys.Reader));
        Assert.Equal(HttpStatusCode.Unauthorized, await GetJobsAsync(service, WrongKey));

        // The sign-in form is throttled on its own: an unknown key there is still merely not valid.
        using var browser = Browser(Attacker);
        Assert.Equal(HttpStatusCode.Unauthorized, await SignInAsync(browser, WrongKey));

        // The throttled requests did not extend the lockout.
        _clock.Advance(TimeSpan.FromSeconds(31));
        Assert.Equal(HttpStatusCode.Unauthorized, await GetJobsAsync(guesser, WrongKey));
        Assert.Equal(HttpStatusCode.OK, await GetJobsAsync(guesser, TestKeys.Admin));

        Assert.Single(_logs.Of(LogLevel.Warning, typeof(AuthThrottle).FullName!));
        var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(2, PrometheusText.Sum(metrics, "conveyor_api_auth_throttled_total", "kind=\"apikey\""));
    }

    [Fact]
    public async Task Only_requests_refused_with_429_count_as_throttled()
    {
        using var guesser = Client(Attacker);
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, await GetJobsAsync(guesser, WrongKey));
        }

        // Locked out now; an endpoint open to anyone answers as ever, refusing nothing.
        for (var i = 0; i < 3; i++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri("/health/live", UriKind.Relative));
            request.Headers.Add("X-Api-Key", WrongKey);
            using var live = await guesser.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, live.StatusCode);
        }

        Assert.Equal(HttpStatusCode.TooManyRequests, await GetJobsAsync(guesser, WrongKey));
        var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(1, PrometheusText.Sum(metrics, "conveyor_api_auth_throttled_total", "kind=\"apikey\""));
    }

    [Fact]
    public async Task Unknown_keys_sent_to_open_endpoints_do_not_count_toward_a_lockout()
    {
        // A monitor or scraper polling the open endpoints with a stale key: nothing refuses it there.
        using var monitor = Client(Attacker);
        foreach (var path in new[] { "/health/live", "/metrics", "/health/live", "/metrics", "/health/live" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(path, UriKind.Relative));
            request.Headers.Add("X-Api-Key", WrongKey);
            using var answer = await monitor.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        }

        // So an unknown key at the API from that address is refused as unknown (401), not locked out (429).
        Assert.Equal(HttpStatusCode.Unauthorized, await GetJobsAsync(monitor, WrongKey));
        Assert.Empty(_logs.Of(LogLevel.Warning, typeof(AuthThrottle).FullName!));
        var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(0, PrometheusText.Sum(metrics, "conveyor_api_auth_lockouts_total", "kind=\"apikey\""));

        // Refused ones still count: two more make three, and the fourth is locked out.
        Assert.Equal(HttpStatusCode.Unauthorized, await GetJobsAsync(monitor, WrongKey));
        Assert.Equal(HttpStatusCode.Unauthorized, await GetJobsAsync(monitor, WrongKey));
        Assert.Equal(HttpStatusCode.TooManyRequests, await GetJobsAsync(monitor, WrongKey));
    }

    [Fact]
    public void Failures_from_ever_more_addresses_keep_the_table_within_its_cap()
    {
        var throttle = _api.Services.GetRequiredService<AuthThrottle>();
        var cap = _api.Services.GetRequiredService<IOptions<AuthThrottlingOptions>>().Value.MaxEntries;

        for (var i = 0; i < 3 * cap; i++)
        {
            var address = new IPAddress([10, (byte)(i >> 16), (byte)(i >> 8), (byte)i]);
            throttle.Failed(AuthThrottleKind.SignIn, address);
            throttle.Failed(AuthThrottleKind.ApiKey, address);
            Assert.InRange(throttle.Tracked(AuthThrottleKind.SignIn), 1, cap);
        }

        Assert.InRange(throttle.Tracked(AuthThrottleKind.ApiKey), 1, cap);

        // One host may pick any address in its IPv6 /64: they count as one.
        var before = throttle.Tracked(AuthThrottleKind.ApiKey);
        for (var i = 0; i < 3; i++)
        {
            throttle.Failed(AuthThrottleKind.ApiKey, IPAddress.Parse($"2001:db8:0:1::{i + 1:x}"));
        }

        Assert.NotNull(throttle.RetryAfterSeconds(AuthThrottleKind.ApiKey, IPAddress.Parse("2001:db8:0:1:ffff::9")));
        Assert.Null(throttle.RetryAfterSeconds(AuthThrottleKind.ApiKey, IPAddress.Parse("2001:db8:0:2::1")));
        Assert.InRange(throttle.Tracked(AuthThrottleKind.ApiKey), 1, Math.Min(cap, before + 1));
    }

    [Fact]
    public async Task A_lockout_shorter_than_its_first_step_stops_the_Api_from_starting()
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Auth:Throttling:ApiKeys:Lockout"] = "00:10:00",
            ["Auth:Throttling:ApiKeys:MaxLockout"] = "00:01:00",
        }));
        Assert.Contains("MaxLockout", refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("X-Api-Key", "")]
    [InlineData("Authorization", "Bearer ")]
    public async Task A_key_header_at_the_sign_in_form_is_not_read_so_it_cannot_test_keys_past_the_throttle(string header, string prefix)
    {
        // The form is open to anyone, so a header's unknown key is never refused (nor counted) there; a valid
        // one changed who the form's anti-forgery token was checked for, and the form "expired": an oracle.
        var statuses = new List<HttpStatusCode>();
        foreach (var key in new[] { TestKeys.Admin, WrongKey })
        {
            using var browser = Browser(Attacker);
            using var response = await PostSignInWithHeaderAsync(browser, WrongKey, header, prefix + key);
            statuses.Add(response.StatusCode);
        }

        Assert.Equal([HttpStatusCode.Unauthorized, HttpStatusCode.Unauthorized], statuses);

        // The form's key signs in, whatever key a header beside it names.
        using var holder = Browser(Bystander);
        using (var signedIn = await PostSignInWithHeaderAsync(holder, TestKeys.Reader, header, prefix + TestKeys.Admin))
        {
            Assert.Equal(HttpStatusCode.Redirect, signedIn.StatusCode);
        }

        using var session = await holder.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));
        Assert.Equal(TestKeys.ReaderName, (await session.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("name").GetString());
    }

    private static async Task<HttpResponseMessage> PostSignInWithHeaderAsync(HttpClient browser, string formKey, string header, string value)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri("/dashboard/login", UriKind.Relative))
        {
            Content = DashboardBrowser.LoginForm(formKey, await DashboardBrowser.FormTokenAsync(browser)),
        };
        request.Headers.TryAddWithoutValidation(header, value);
        return await browser.SendAsync(request);
    }

    private HttpClient Browser(string localAddress) => From(localAddress, new CookieContainer());

    private HttpClient Client(string localAddress) => From(localAddress, null);

    /// <summary>A client whose connections leave from <paramref name="localAddress"/>, so the Api sees that address.</summary>
    private HttpClient From(string localAddress, CookieContainer? cookies)
    {
        var handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            UseCookies = cookies is not null,
            CookieContainer = cookies ?? new CookieContainer(),
            ConnectCallback = async (context, cancellationToken) =>
            {
                var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                try
                {
                    socket.Bind(new IPEndPoint(IPAddress.Parse(localAddress), 0));
                    await socket.ConnectAsync(context.DnsEndPoint, cancellationToken);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        return new HttpClient(handler) { BaseAddress = _api.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
    }

    private static async Task<HttpStatusCode> SignInAsync(HttpClient browser, string key)
    {
        using var response = await PostSignInAsync(browser, key);
        return response.StatusCode;
    }

    private static async Task<HttpResponseMessage> PostSignInAsync(HttpClient browser, string key) =>
        await browser.PostAsync(new Uri("/dashboard/login", UriKind.Relative),
            DashboardBrowser.LoginForm(key, await DashboardBrowser.FormTokenAsync(browser)));

    private static async Task<HttpStatusCode> GetJobsAsync(HttpClient client, string key, bool bearer = false)
    {
        using var response = await SendJobsAsync(client, key, bearer);
        return response.StatusCode;
    }

    private static async Task<HttpResponseMessage> SendJobsAsync(HttpClient client, string key, bool bearer = false)
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, new Uri("/api/jobs", UriKind.Relative));
        request.Headers.TryAddWithoutValidation(bearer ? "Authorization" : "X-Api-Key", bearer ? "Bearer " + key : key);
        return await client.SendAsync(request);
    }
}
