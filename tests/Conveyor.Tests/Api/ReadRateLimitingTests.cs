using System.Diagnostics.Metrics;
using System.Net;
using Conveyor.Api;
using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Api;

/// <summary>
/// Reads (GET under /api/ and /dashboard/api/) have a per-client allowance of their own, beside the submissions':
/// a key listing jobs in a loop gets 429 with Retry-After once it has used its allowance, instead of taking the
/// database and the management API from every other client. Each test sets a small allowance (one read a second,
/// a couple at once) and reads until it is refused, a bounded number of times.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class ReadRateLimitingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>A second key with every scope, so that two clients can both read and submit.</summary>
    private const string OtherAdmin = "test-key-other-admin-0123456789abcdef";

    private static readonly Uri Jobs = new("/api/jobs", UriKind.Relative);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_client_over_its_read_allowance_gets_429_problems_with_retry_after_while_another_key_reads_on()
    {
        await using var api = await StartAsync(readBurst: 2);
        using var refusals = new ReadRefusals(api);

        using var refused = await ReadUntilRefusedAsync(api.Client, Jobs);

        await refused.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        Assert.True(refused.Headers.RetryAfter?.Delta >= TimeSpan.FromSeconds(1), $"Retry-After: {refused.Headers.RetryAfter}");
        Assert.Contains("reads faster than it may", await refused.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Equal(1, refusals.Count);

        // Another key has a bucket of its own, full, whatever the first one did.
        using var other = TestKeys.Client(api.BaseAddress, OtherAdmin);
        using var answer = await other.GetAsync(Jobs);
        Assert.Equal(HttpStatusCode.OK, answer.StatusCode);

        // Every read the Api serves is counted, the error queues' and the dashboard's data as much as the jobs'.
        using (var queues = await ReadUntilRefusedAsync(other, new Uri("/api/error-queues", UriKind.Relative)))
        {
            await queues.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        }

        Assert.Equal(2, refusals.Count);
    }

    [Fact]
    public async Task A_client_that_waits_its_retry_after_reads_again()
    {
        await using var api = await StartAsync(readBurst: 2);

        TimeSpan wait;
        using (var refused = await ReadUntilRefusedAsync(api.Client, Jobs))
        {
            wait = refused.Headers.RetryAfter?.Delta ?? TimeSpan.Zero;
        }

        await Task.Delay(wait);
        using var again = await api.Client.GetAsync(Jobs);
        Assert.Equal(HttpStatusCode.OK, again.StatusCode);
    }

    [Fact]
    public async Task Reads_and_submissions_do_not_share_a_bucket()
    {
        await using var api = await StartAsync(readBurst: 2, new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "2",
        });

        // Reads used up: a submission still takes a permit of its own.
        using (var refused = await ReadUntilRefusedAsync(api.Client, Jobs))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
        }

        using (var submitted = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid())))
        {
            Assert.Equal(HttpStatusCode.Accepted, submitted.StatusCode);
        }

        // Submissions used up (by another key): its reads are all there.
        using var other = TestKeys.Client(api.BaseAddress, OtherAdmin);
        for (var attempt = 0; ; attempt++)
        {
            Assert.True(attempt < 20, "twenty submissions in a row were all accepted at one a second, burst 2");
            using var submitted = await other.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
            if (submitted.StatusCode == HttpStatusCode.TooManyRequests)
            {
                break;
            }

            Assert.Equal(HttpStatusCode.Accepted, submitted.StatusCode);
        }

        using var read = await other.GetAsync(Jobs);
        Assert.Equal(HttpStatusCode.OK, read.StatusCode);
    }

    [Fact]
    public async Task Probes_scrapes_the_api_description_and_the_dashboard_page_are_never_limited()
    {
        await using var api = await StartAsync(readBurst: 1);
        using (var refused = await ReadUntilRefusedAsync(api.Client, Jobs))
        {
            Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
        }

        // The client's reads are used up; none of these takes one. Only their status is read (not /metrics' values,
        // which every host in the process shares), through a client of the same key.
        using var client = TestKeys.Client(api.BaseAddress, TestKeys.Admin);
        foreach (var path in new[] { "/health/live", "/health/ready", "/metrics", "/openapi/v1.json", "/dashboard/app.js" })
        {
            for (var i = 0; i < 5; i++)
            {
                using var answer = await client.GetAsync(new Uri(path, UriKind.Relative));
                Assert.True(answer.StatusCode != HttpStatusCode.TooManyRequests, $"{path} answered 429");
            }
        }
    }

    [Fact]
    public async Task Off_no_read_is_refused()
    {
        await using var api = await StartAsync(readBurst: 1, new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false" });

        for (var i = 0; i < 20; i++)
        {
            using var answer = await api.Client.GetAsync(Jobs);
            Assert.Equal(HttpStatusCode.OK, answer.StatusCode);
        }
    }

    [Fact]
    public async Task A_read_burst_smaller_than_a_seconds_reads_stops_the_Api_from_starting()
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:ReadPermitsPerSecond"] = "50",
            ["RateLimiting:ReadBurst"] = "10",
        }));
        Assert.Contains("RateLimiting:ReadBurst (10) must be at least RateLimiting:ReadPermitsPerSecond (50)", refused.Message, StringComparison.Ordinal);

        // Off, the two are not used: nothing to refuse.
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:Enabled"] = "false",
            ["RateLimiting:ReadPermitsPerSecond"] = "50",
            ["RateLimiting:ReadBurst"] = "10",
        });
    }

    /// <summary>An Api allowing each client one read a second and <paramref name="readBurst"/> at once, accepting <see cref="OtherAdmin"/> too.</summary>
    private Task<RunningApp> StartAsync(int readBurst, IDictionary<string, string?>? overrides = null)
    {
        var settings = new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:other-admin:Name"] = "other-admin",
            ["Auth:ApiKeys:other-admin:Key"] = OtherAdmin,
            ["Auth:ApiKeys:other-admin:Scopes"] = "admin",
            ["RateLimiting:ReadPermitsPerSecond"] = "1",
            ["RateLimiting:ReadBurst"] = readBurst.ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        foreach (var (key, value) in overrides ?? new Dictionary<string, string?>())
        {
            settings[key] = value;
        }

        return fixture.StartApiAsync(settings);
    }

    /// <summary>
    /// Reads <paramref name="path"/> until it is refused, and returns the refusal: every answer before it is a 200. At one
    /// read a second, twenty in a row cannot all be served by a bucket of a few.
    /// </summary>
    private static async Task<HttpResponseMessage> ReadUntilRefusedAsync(HttpClient client, Uri path)
    {
        for (var attempt = 0; attempt < 20; attempt++)
        {
            var answer = await client.GetAsync(path);
            if (answer.StatusCode != HttpStatusCode.OK)
            {
                return answer;
            }

            answer.Dispose();
        }

        throw new Xunit.Sdk.XunitException($"twenty reads of {path} in a row were all served at one a second");
    }

    /// <summary>Reads refused for the client's allowance, as the Api's own counter <c>conveyor.api.rate_limited</c> (<c>kind=read</c>) counts them.</summary>
    private sealed class ReadRefusals : IDisposable
    {
        private readonly MeterListener _listener = new();
        private long _count;

        public ReadRefusals(RunningApp api)
        {
            var meters = api.Services.GetRequiredService<IMeterFactory>();
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                // This host's meter only: other hosts in the process count their own refusals.
                if (instrument.Meter.Scope == meters && instrument.Meter.Name == ApiApp.ApiMeterName && instrument.Name == "conveyor.api.rate_limited")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
            {
                foreach (var tag in tags)
                {
                    if (tag.Key == "kind" && Equals(tag.Value, "read"))
                    {
                        Interlocked.Add(ref _count, value);
                    }
                }
            });
            _listener.Start();
        }

        public long Count => Interlocked.Read(ref _count);

        public void Dispose() => _listener.Dispose();
    }
}
