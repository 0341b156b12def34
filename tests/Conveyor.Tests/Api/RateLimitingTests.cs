using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Options;
using Npgsql;
using System.Net;
using System.Text;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class RateLimitingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_burst_over_the_client_limit_gets_429_problems_with_retry_after()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "2",
        });

        var burst = System.Diagnostics.Stopwatch.StartNew();
        var responses = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ =>
            api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))));
        // A permit is refilled each second the burst was under way: usually under one, but a busy machine spreads
        // eight requests over more (and then a third or a fourth is rightly accepted).
        var refilled = (int)Math.Ceiling(burst.Elapsed.TotalSeconds);
        try
        {
            var limited = responses.Where(r => r.StatusCode == HttpStatusCode.TooManyRequests).ToList();
            var accepted = responses.Count(r => r.StatusCode == HttpStatusCode.Accepted);
            Assert.Equal(responses.Length, limited.Count + accepted);
            // Two from the bucket, and at most those refilled while the burst was under way.
            Assert.InRange(accepted, 2, 2 + refilled);
            foreach (var response in limited)
            {
                await response.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
                Assert.True(response.Headers.RetryAfter?.Delta >= TimeSpan.FromSeconds(1));
            }
        }
        finally
        {
            foreach (var response in responses)
            {
                response.Dispose();
            }
        }

        // Reads take from a bucket of their own.
        using var list = await api.Client.GetAsync(new Uri("/api/jobs", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, list.StatusCode);
    }

    [Fact]
    public async Task A_batch_over_the_permits_left_is_accepted_when_sent_again_after_its_retry_after()
    {
        // Two permits a second, added together once a second: a slow refill, so a batch waits for several.
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "2",
            ["RateLimiting:Burst"] = "6",
        });
        using (var first = await PostChargesAsync(api, 5))
        {
            Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        }

        // One permit left (or a refill more): six need three refills (two), not two (one).
        var six = Charges(6);
        TimeSpan retryAfter;
        using (var refused = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, six))
        {
            await refused.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            retryAfter = refused.Headers.RetryAfter?.Delta ?? TimeSpan.Zero;
        }

        await Task.Delay(retryAfter);
        using var retried = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, six);

        Assert.True(retried.StatusCode == HttpStatusCode.Accepted,
            $"after Retry-After {retryAfter.TotalSeconds} s: {(int)retried.StatusCode} {await retried.Content.ReadAsStringAsync()}");
    }

    [Fact]
    public async Task A_batch_refused_for_a_new_job_with_a_past_runAt_pays_one_permit_so_the_corrected_batch_gets_in()
    {
        // One permit a second: a slow refill, next to the batches' sizes.
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "6",
        });
        // Times past (a wrong year, say): each job could only be the repeat of one accepted before, so each is looked up.
        var paymentIds = Enumerable.Range(0, 5).Select(_ => Guid.NewGuid()).ToList();
        var past = DateTimeOffset.UtcNow.AddYears(-1);
        var stale = JobBatchTests.Batch(paymentIds.Select(id => JobRequests.ScheduledChargePayment(id, past)));

        using (var refused = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, stale))
        {
            Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
            Assert.Equal(
                Enumerable.Range(0, 5).Select(i => $"jobs[{i}].runAt"),
                (await refused.ReadErrorFieldsAsync()).Order(StringComparer.Ordinal));
        }

        // It created nothing and cost one permit, as any invalid batch does: the corrected batch of five finds them there.
        var future = DateTimeOffset.UtcNow.AddDays(30);
        var corrected = JobBatchTests.Batch(paymentIds.Select(id => JobRequests.ScheduledChargePayment(id, future)));
        using var accepted = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, corrected);
        Assert.True(accepted.StatusCode == HttpStatusCode.Accepted, $"{(int)accepted.StatusCode} {await accepted.Content.ReadAsStringAsync()}");
    }

    /// <summary>
    /// A batch holding a job whose <c>runAt</c> is past (the repeat of one accepted before, say) has its jobs looked up
    /// before it takes its permits. It was let in while the bucket held a permit, and took one only once the lookup
    /// was over: batches sent together all made their lookup on the same permit, and those left without one were
    /// refused 429 having made it for nothing. A permit is now taken before the lookup, and a batch that finds none
    /// is refused unread. Here the lookups wait on a lock, so that every batch has arrived before any of them ends.
    /// </summary>
    [Fact]
    public async Task Batches_sent_at_once_beyond_the_clients_permits_are_refused_before_their_jobs_are_looked_up()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "2",
        });
        // A job accepted before (its row is what the lookup finds), sent again after its time with a new one.
        var repeated = Guid.NewGuid();
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.Add(new Job
            {
                Id = Guid.NewGuid(), Kind = JobKinds.ChargePayment, BusinessKey = repeated.ToString(), Status = JobStatus.Succeeded,
                CreatedAt = DateTimeOffset.UtcNow, UpdatedAt = DateTimeOffset.UtcNow,
            });
            await db.SaveChangesAsync();
        }

        var past = DateTimeOffset.UtcNow.AddDays(-1);
        await using var holder = new NpgsqlConnection(fixture.ConnectionString);
        await holder.OpenAsync();
        await using var locked = await holder.BeginTransactionAsync();
        await using (var lockJobs = new NpgsqlCommand("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE", holder, locked))
        {
            await lockJobs.ExecuteNonQueryAsync();
        }

        const int batches = 8;
        var sends = Enumerable.Range(0, batches)
            .Select(_ => JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, JobBatchTests.Batch(
                [JobRequests.ScheduledChargePayment(repeated, past), JobRequests.ChargePayment(Guid.NewGuid())])))
            .ToList();
        List<HttpResponseMessage> answered = [];
        try
        {
            // Each batch is answered, or waits in its lookup; two permits pay for two lookups (three, with a refill).
            await Eventually.AssertAsync(async () => Assert.True(
                sends.Count(send => send.IsCompleted) + await LookupsWaitingAsync() >= batches));
            answered = [.. sends.Where(send => send.IsCompleted).Select(send => send.Result)];
        }
        finally
        {
            await locked.RollbackAsync();
            foreach (var response in await Task.WhenAll(sends))
            {
                Assert.Contains(response.StatusCode, new[] { HttpStatusCode.Accepted, HttpStatusCode.TooManyRequests });
                response.Dispose();
            }
        }

        Assert.True(answered.Count > 0, $"all {batches} batches were looked up on the client's two permits");
        Assert.All(answered, response => Assert.Equal(HttpStatusCode.TooManyRequests, response.StatusCode));
    }

    /// <summary>
    /// A batch was let in to be read on a permit merely there, taking none until its size was known: a client with
    /// permits left had any number of batches read side by side (up to 1 MiB each), every one of these twenty slow
    /// senders held open until its body came. A batch now takes its first permit before its body is read, so those
    /// beyond the client's permits (two, and one a second) are refused at once, unread. Raw connections: each sends
    /// its headers and half its body, and reads what the Api answers meanwhile.
    /// </summary>
    [Fact]
    public async Task Batches_beyond_the_clients_permits_are_refused_before_their_bodies_are_read()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "2",
        });
        const int senders = 20;
        var body = Encoding.UTF8.GetBytes(Charges(1));
        var head = Encoding.ASCII.GetBytes(
            $"POST /api/jobs/{JobKinds.ChargePayment}/batch HTTP/1.1\r\nHost: {api.Client.BaseAddress!.Authority}\r\n"
            + $"X-Api-Key: {api.Client.DefaultRequestHeaders.GetValues("X-Api-Key").Single()}\r\n"
            + $"Content-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n");
        var connections = new List<System.Net.Sockets.TcpClient>();
        try
        {
            var statusLines = new List<Task<string?>>();
            for (var i = 0; i < senders; i++)
            {
                var connection = new System.Net.Sockets.TcpClient();
                connections.Add(connection);
                await connection.ConnectAsync(api.Client.BaseAddress.Host, api.Client.BaseAddress.Port);
                var stream = connection.GetStream();
                await stream.WriteAsync(head);
                await stream.WriteAsync(body.AsMemory(0, body.Length / 2));
                await stream.FlushAsync();
                statusLines.Add(new StreamReader(stream, Encoding.ASCII).ReadLineAsync());
            }

            // Answered while every body is still half sent: refused before it was read.
            await Eventually.AssertAsync(() => Assert.Contains(
                statusLines, line => line.IsCompletedSuccessfully && line.Result?.Contains(" 429 ", StringComparison.Ordinal) == true));
            Assert.DoesNotContain(statusLines, line => line.IsCompletedSuccessfully && line.Result?.Contains(" 202 ", StringComparison.Ordinal) == true);
        }
        finally
        {
            connections.ForEach(connection => connection.Dispose());
        }
    }

    [Fact]
    public async Task A_batch_refused_before_its_body_is_read_pays_one_permit()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "4",
        });

        for (var i = 0; i < 4; i++)
        {
            using var unknownKind = await JobBatchTests.PostBatchAsync(api, "mine-bitcoin", Charges(1));
            await unknownKind.AssertProblemAsync(StatusCodes.Status404NotFound);
        }

        // Refills since add fewer than three.
        using var next = await PostChargesAsync(api, 3);
        await next.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
    }

    [Fact]
    public async Task A_batch_refused_for_its_media_type_pays_one_permit()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "4",
        });

        for (var i = 0; i < 4; i++)
        {
            using var content = new StringContent(Charges(1), Encoding.UTF8, "text/plain");
            using var notJson = await api.Client.PostAsync(new Uri("/api/jobs/charge-payment/batch", UriKind.Relative), content);
            await notJson.AssertProblemAsync(StatusCodes.Status415UnsupportedMediaType);
        }

        // Refills since add fewer than three.
        using var next = await PostChargesAsync(api, 3);
        await next.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
    }

    [Fact]
    public async Task A_single_job_over_the_limit_is_accepted_when_sent_again_after_its_retry_after()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "1",
        });
        await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));

        var job = JobRequests.ChargePayment(Guid.NewGuid());
        TimeSpan retryAfter;
        using (var refused = await api.Client.PostJobAsync(JobKinds.ChargePayment, job))
        {
            await refused.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            retryAfter = refused.Headers.RetryAfter?.Delta ?? TimeSpan.Zero;
        }

        await Task.Delay(retryAfter);
        using var retried = await api.Client.PostJobAsync(JobKinds.ChargePayment, job);

        Assert.Equal(HttpStatusCode.Accepted, retried.StatusCode);
    }

    [Fact]
    public async Task Each_api_key_has_its_own_allowance()
    {
        const string aliceKey = "alice-key-0123456789abcdefghij";
        const string bobKey = "bob-key-0123456789abcdefghijklm";
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "2",
            ["Auth:ApiKeys:0:Name"] = "alice",
            ["Auth:ApiKeys:0:Key"] = aliceKey,
            ["Auth:ApiKeys:0:Scopes"] = "jobs:publish",
            ["Auth:ApiKeys:1:Name"] = "bob",
            ["Auth:ApiKeys:1:Key"] = bobKey,
            ["Auth:ApiKeys:1:Scopes"] = "jobs:publish",
        });

        var alice = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => PostAsync(api, aliceKey)));
        var bob = await Task.WhenAll(Enumerable.Range(0, 2).Select(_ => PostAsync(api, bobKey)));

        Assert.Contains(HttpStatusCode.TooManyRequests, alice);
        Assert.All(bob, status => Assert.Equal(HttpStatusCode.Accepted, status));
    }

    [Fact]
    public async Task With_rate_limiting_disabled_a_burst_is_accepted()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:Enabled"] = "false",
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "1",
        });

        var responses = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ =>
            api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()))));

        Assert.All(responses, r => Assert.Equal(HttpStatusCode.Accepted, r.StatusCode));
        foreach (var response in responses)
        {
            response.Dispose();
        }
    }

    [Fact]
    public async Task A_burst_smaller_than_a_seconds_permits_stops_the_Api_from_starting()
    {
        // Refilled once a second and holding at most Burst, such a bucket would let a client send 2 a second, not 20.
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "20",
            ["RateLimiting:Burst"] = "2",
        }));
        Assert.Contains("RateLimiting:Burst (2) must be at least RateLimiting:PermitsPerSecond (20)", refused.Message, StringComparison.Ordinal);

        // Off, the two are not used: nothing to refuse.
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:Enabled"] = "false",
            ["RateLimiting:PermitsPerSecond"] = "20",
            ["RateLimiting:Burst"] = "2",
        });
    }

    /// <summary>The Api's queries waiting for a lock on this run's database (here, the test's lock on <c>jobs</c>).</summary>
    private async Task<long> LookupsWaitingAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var waiting = new NpgsqlCommand(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'", connection);
        return (long)(await waiting.ExecuteScalarAsync() ?? 0L);
    }

    private static string Charges(int count) =>
        JobBatchTests.Batch(Enumerable.Range(0, count).Select(_ => JobRequests.ChargePayment(Guid.NewGuid())));

    private static Task<HttpResponseMessage> PostChargesAsync(RunningApp api, int count) =>
        JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, Charges(count));

    private static async Task<HttpStatusCode> PostAsync(RunningApp api, string apiKey)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri($"/api/jobs/{JobKinds.ChargePayment}", UriKind.Relative))
        {
            Content = new StringContent(JobRequests.ChargePayment(Guid.NewGuid()), System.Text.Encoding.UTF8, "application/json"),
        };
        request.Headers.Add("X-Api-Key", apiKey);
        using var response = await api.Client.SendAsync(request);
        return response.StatusCode;
    }
}
