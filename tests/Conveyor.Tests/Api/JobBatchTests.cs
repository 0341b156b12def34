using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary><c>POST /api/jobs/{kind}/batch</c> against the real database and broker (no worker runs here).</summary>
[Collection(AloneCollection.Name)]
public sealed class JobBatchTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>The largest batch body (JobsApi.MaxBatchBodyBytes).</summary>
    private const int MaxBatchBodyBytes = 1024 * 1024;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Each_job_of_a_batch_is_recorded_as_sent_and_published_with_its_job_id_in_order()
    {
        await using var api = await fixture.StartApiAsync();
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var paymentIds = Enumerable.Range(0, 3).Select(_ => Guid.NewGuid()).ToArray();
        var scheduled = Guid.NewGuid();
        string[] jobs =
        [
            .. paymentIds.Select(id => JobRequests.ChargePayment(id)),
            JobRequests.ScheduledChargePayment(scheduled, DateTimeOffset.UtcNow.AddHours(1)),
        ];

        using var response = await PostBatchAsync(api, JobKinds.ChargePayment, Batch(jobs));

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var answer = await response.Content.ReadFromJsonAsync<JobBatchAccepted>();
        Assert.NotNull(answer);
        Assert.Equal([0, 1, 2, 3], answer.Jobs.Select(j => j.Index));
        Assert.All(answer.Jobs, j => Assert.Null(j.Error));
        Assert.Equal([JobStatus.Queued, JobStatus.Queued, JobStatus.Queued, JobStatus.Scheduled], answer.Jobs.Select(j => j.Status));

        await using (var db = fixture.CreateDbContext())
        {
            var rows = await db.Jobs.AsNoTracking().ToDictionaryAsync(j => j.Id);
            Assert.Equal(4, rows.Count);
            for (var i = 0; i < paymentIds.Length; i++)
            {
                var row = rows[answer.Jobs[i].JobId!.Value];
                Assert.Equal(paymentIds[i].ToString("D"), row.BusinessKey);
                // Stored byte for byte as sent, like a single submission's body: the stranded-job check republishes from it.
                Assert.Equal(Encoding.UTF8.GetBytes(jobs[i]), row.RequestBody);
            }

            Assert.Equal(scheduled.ToString("D"), rows[answer.Jobs[3].JobId!.Value].BusinessKey);
            Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        }

        // Confirmed before the 202: every immediate job's command is in the queue, stamped with its job id.
        var headers = new Dictionary<Guid, Guid>();
        for (var i = 0; i < paymentIds.Length; i++)
        {
            var message = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
            Assert.NotNull(message);
            using var envelope = JsonDocument.Parse(message.Body);
            var paymentId = envelope.RootElement.GetProperty("message").GetProperty("paymentId").GetGuid();
            headers[paymentId] = Guid.Parse(Encoding.UTF8.GetString(Assert.IsType<byte[]>(message.BasicProperties.Headers?[JobHeaders.JobId])));
        }

        Assert.Null(await published.Channel.BasicGetAsync(published.Queue, autoAck: true));
        for (var i = 0; i < paymentIds.Length; i++)
        {
            Assert.Equal(answer.Jobs[i].JobId, headers[paymentIds[i]]);
        }

        // One batch of four in the Api's histogram of batch sizes.
        var metrics = await api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(1, Observability.PrometheusText.Sum(metrics, "conveyor_api_batch_jobs_count", "kind=\"charge-payment\"", "outcome=\"accepted\""));
        Assert.Equal(4, Observability.PrometheusText.Sum(metrics, "conveyor_api_batch_jobs_sum", "kind=\"charge-payment\"", "outcome=\"accepted\""));
    }

    [Fact]
    public async Task The_same_batch_sent_again_answers_the_same_jobs_and_submits_nothing_twice()
    {
        await using var api = await fixture.StartApiAsync();
        var key = $"import-{Guid.NewGuid()}";
        var batch = Batch([JobRequests.ChargePayment(Guid.NewGuid()), JobRequests.ChargePayment(Guid.NewGuid())]);

        var first = await AcceptBatchAsync(api, batch, key);
        var again = await AcceptBatchAsync(api, batch, key);
        // Without the key, the business ids still tell the jobs apart.
        var unkeyed = await AcceptBatchAsync(api, batch, idempotencyKey: null);

        Assert.Equal(first.Jobs.Select(j => j.JobId), again.Jobs.Select(j => j.JobId));
        Assert.Equal(first.Jobs.Select(j => j.JobId), unkeyed.Jobs.Select(j => j.JobId));
        await using var db = fixture.CreateDbContext();
        Assert.Equal([$"{key}#0", $"{key}#1"], await db.Jobs.OrderBy(j => j.IdempotencyKey).Select(j => j.IdempotencyKey).ToListAsync());
    }

    [Fact]
    public async Task A_batch_key_reused_for_another_job_is_a_422_that_still_answers_each_job()
    {
        await using var api = await fixture.StartApiAsync();
        var key = $"import-{Guid.NewGuid()}";
        var (kept, changed) = (Guid.NewGuid(), Guid.NewGuid());
        var first = await AcceptBatchAsync(api, Batch([JobRequests.ChargePayment(kept), JobRequests.ChargePayment(changed, amountMinor: 100)]), key);

        using var response = await PostBatchAsync(api, JobKinds.ChargePayment,
            Batch([JobRequests.ChargePayment(kept), JobRequests.ChargePayment(changed, amountMinor: 999)]), key);

        await response.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        var problem = await response.ReadJsonAsync();
        Assert.Equal("Idempotency-Key reused", problem.GetProperty("title").GetString());
        var jobs = problem.GetProperty("jobs").EnumerateArray().ToList();
        Assert.Equal(first.Jobs[0].JobId, jobs[0].GetProperty("jobId").GetGuid());
        Assert.False(jobs[0].TryGetProperty("error", out _));
        Assert.Equal(422, jobs[1].GetProperty("error").GetProperty("status").GetInt32());
        Assert.False(jobs[1].TryGetProperty("jobId", out _));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(2, await db.Jobs.CountAsync());
        var changedRow = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == changed.ToString("D"));
        Assert.Equal(Encoding.UTF8.GetBytes(JobRequests.ChargePayment(changed, amountMinor: 100)), changedRow.RequestBody);
    }

    [Fact]
    public async Task A_job_of_a_batch_naming_a_business_id_submitted_with_another_command_is_refused_and_the_others_are_accepted()
    {
        // ADR 0011, without a batch key: the business id alone ties the job to the earlier one.
        await using var api = await fixture.StartApiAsync();
        var (reused, fresh) = (Guid.NewGuid(), Guid.NewGuid());
        var earlier = await AcceptBatchAsync(api, Batch([JobRequests.ChargePayment(reused, amountMinor: 100)]), idempotencyKey: null);

        using var response = await PostBatchAsync(api, JobKinds.ChargePayment,
            Batch([JobRequests.ChargePayment(reused, amountMinor: 999), JobRequests.ChargePayment(fresh)]), idempotencyKey: null);

        await response.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        var problem = await response.ReadJsonAsync();
        Assert.Equal("Business id reused", problem.GetProperty("title").GetString());
        var jobs = problem.GetProperty("jobs").EnumerateArray().ToList();
        var error = jobs[0].GetProperty("error");
        Assert.Equal(422, error.GetProperty("status").GetInt32());
        Assert.StartsWith($"paymentId: {reused:D} names job {earlier.Jobs[0].JobId}", error.GetProperty("detail").GetString(), StringComparison.Ordinal);
        Assert.False(jobs[0].TryGetProperty("jobId", out _));
        Assert.NotEqual(Guid.Empty, jobs[1].GetProperty("jobId").GetGuid());
        await using var db = fixture.CreateDbContext();
        Assert.Equal(2, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task One_bad_job_refuses_the_whole_batch_with_each_problem_named_by_its_place()
    {
        await using var api = await fixture.StartApiAsync();
        var repeated = Guid.NewGuid();
        var batch = Batch(
        [
            JobRequests.ChargePayment(repeated),
            JobRequests.ChargePayment(Guid.NewGuid(), amountMinor: -1),
            "42",
            """{"paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","accountId":"acct-42","amountMinor":5,"currency":"EUR","amount_minor":5}""",
            JobRequests.ChargePayment(repeated),
            JobRequests.ChargePayment(Guid.NewGuid()),
        ]);

        // A bad header too: every problem is named in the one answer.
        using var response = await PostBatchAsync(api, JobKinds.ChargePayment, batch, idempotencyKey: new string('k', 197));

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(
            new HashSet<string>(["Idempotency-Key", "jobs[1].amountMinor", "jobs[2]", "jobs[3].amount_minor", "jobs[4].paymentId"]),
            await response.ReadErrorFieldsAsync());
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Theory]
    [InlineData("""{}""", "jobs")]
    [InlineData("""{"jobs":null}""", "jobs")]
    [InlineData("""{"jobs":[]}""", "jobs")]
    [InlineData("""{"jobs":{"paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11"}}""", "jobs")]
    [InlineData("""{"jobs":[{}],"priority":1}""", "priority")]
    [InlineData("""[{"jobs":[]}]""", "$")]
    [InlineData("""{"jobs":[""", "$")]
    [InlineData("""{"jobs":["\ud800"]}""", "jobs[0]")]
    [InlineData("""{"jobs":[{}],"\ud800":1}""", "$")]
    [InlineData("""{"jobs":[["\ud800"]]}""", "jobs[0]")]
    [InlineData("""{"jobs":[{},[{"a":1,"a":2}]]}""", "jobs[1]")]
    [InlineData("""[{"jobs":[{"a":1,"a":2}]}]""", "$")]
    // Not JSON after the repeat: refused where the parser stops, as a single job's body is.
    [InlineData("""{"jobs":[{"a":1,"a":2}],""", "$")]
    // A broken \u escape outside a job is named as in a single job's body: by its top-level field, or the body.
    [InlineData("""{"jobs":[{}],"x":"\ud800"}""", "x")]
    [InlineData("""{"jobs":{"a":"\ud800"}}""", "jobs")]
    [InlineData("""[{"jobs":[{"a":"\ud800"}]}]""", "$")]
    // The first in the body, as for a single job's body: a top-level field's before a job's.
    [InlineData("""{"x":"\ud800","jobs":[{"a":"\ud800"}]}""", "x")]
    // In a job before the body stops being JSON: the job's field; after it: where the parser stops.
    [InlineData("""{"jobs":[{"a":"\ud800"}],""", "jobs[0].a")]
    [InlineData("""{"jobs":[{"a":1} {"a":"\ud800"}]}""", "$")]
    // After a repeat in an earlier job: the escape.
    [InlineData("""{"jobs":[{"a":1,"a":2},{"b":"\ud800"}]}""", "jobs[1].b")]
    public async Task A_batch_of_the_wrong_shape_is_a_400_naming_the_field(string body, string field)
    {
        await using var api = await fixture.StartApiAsync();

        using var response = await PostBatchAsync(api, JobKinds.ChargePayment, body);

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Contains(field, await response.ReadErrorFieldsAsync());
    }

    /// <summary>
    /// A field given twice anywhere in the body is refused: in a batch, the job and its field are named as for
    /// any other bad job.
    /// </summary>
    [Theory]
    [InlineData(JobKinds.ChargePayment,
        """{"paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","accountId":"acct-1","amountMinor":5,"accountId":"acct-2","currency":"EUR"}""",
        "jobs[1].accountId", "Is given more than once")]
    [InlineData(JobKinds.DeliverWebhook,
        """{"webhookId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","url":"https://hooks.example.com/orders","eventType":"order.paid","payload":{"order":{"id":7,"id":8}}}""",
        "jobs[1].payload", "Holds an object with a field given more than once")]
    // Compared after their escapes are read, as the parser compares them: "\u0061ccountId" is accountId.
    [InlineData(JobKinds.ChargePayment,
        """{"paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","accountId":"acct-1","amountMinor":5,"\u0061ccountId":"acct-2","currency":"EUR"}""",
        "jobs[1].accountId", "Is given more than once")]
    // Deep in arrays of arrays of objects.
    [InlineData(JobKinds.DeliverWebhook,
        """{"webhookId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","url":"https://hooks.example.com/orders","eventType":"order.paid","payload":{"a":[[{"b":1}],[{"c":{"d":1,"d":2}}]]}}""",
        "jobs[1].payload", "Holds an object with a field given more than once")]
    // Repeated only within one object, not in a sibling, a parent or a child; and only the first repeat is named.
    [InlineData(JobKinds.DeliverWebhook,
        """{"webhookId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","payload":{"url":{"url":1},"b":[{"url":1},{"url":1}]},"url":"https://hooks.example.com/orders","eventType":"a","eventType":"b","payload":{}}""",
        "jobs[1].eventType", "Is given more than once")]
    public async Task A_field_given_twice_in_a_job_is_a_400_naming_the_job_and_field(string kind, string job, string field, string why)
    {
        await using var api = await fixture.StartApiAsync();
        string Valid() => kind == JobKinds.ChargePayment ? JobRequests.ChargePayment(Guid.NewGuid()) : JobRequests.DeliverWebhook(Guid.NewGuid());
        var first = Valid();

        using var response = await PostBatchAsync(api, kind, Batch([first, job, Valid()]));
        using var twice = await PostBatchAsync(api, kind, $$"""{"jobs":[{{first}}],"jobs":[{{first}}]}""");

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(new HashSet<string>([field]), await response.ReadErrorFieldsAsync());
        Assert.Contains(why, await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        // Twice at the top: that field, as a single job's body names it.
        await twice.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(new HashSet<string>(["jobs"]), await twice.ReadErrorFieldsAsync());
        Assert.Contains("Is given more than once", await twice.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    /// <summary>
    /// A \u escape that is half a surrogate pair (text cut short mid-character by its sender, typically)
    /// is refused before parsing: in a batch, the job and its field are named as for any other bad job.
    /// </summary>
    [Theory]
    [InlineData(JobKinds.ChargePayment,
        """{"paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","accountId":"acct-\ud800","amountMinor":5,"currency":"EUR"}""",
        "jobs[1].accountId")]
    [InlineData(JobKinds.DeliverWebhook,
        """{"webhookId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","url":"https://hooks.example.com/orders","eventType":"order.paid","payload":{"note":["cut \ud83d"]}}""",
        "jobs[1].payload")]
    [InlineData(JobKinds.DeliverWebhook,
        """{"webhookId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","url":"https://hooks.example.com/orders","eventType":"order.paid","payload":{},"\udc00":1}""",
        "jobs[1]")]
    // With a field given twice before it: the escape is named, as for a single job's body, whatever comes first.
    [InlineData(JobKinds.ChargePayment,
        """{"paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","accountId":"acct-\ud800","amountMinor":5,"currency":"EUR"}""",
        "jobs[1].accountId")]
    // Or after it.
    [InlineData(JobKinds.ChargePayment,
        """{"paymentId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","accountId":"acct-\ud800","amountMinor":5,"currency":"EUR","accountId":"acct-2"}""",
        "jobs[1].accountId")]
    // In a name deep in a job's field.
    [InlineData(JobKinds.DeliverWebhook,
        """{"webhookId":"4d5c8f0e-3a41-4b7e-9a38-0c2f6d3e9b11","url":"https://hooks.example.com/orders","eventType":"order.paid","payload":{"order":[{"\ud83d":1}]}}""",
        "jobs[1].payload")]
    public async Task A_broken_unicode_escape_in_a_job_is_a_400_naming_the_job_and_field(string kind, string job, string field)
    {
        await using var api = await fixture.StartApiAsync();
        string Valid() => kind == JobKinds.ChargePayment ? JobRequests.ChargePayment(Guid.NewGuid()) : JobRequests.DeliverWebhook(Guid.NewGuid());

        using var response = await PostBatchAsync(api, kind, Batch([Valid(), job, Valid()]));

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(new HashSet<string>([field]), await response.ReadErrorFieldsAsync());
        Assert.Contains("escape in it is an unpaired surrogate", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task More_jobs_than_a_batch_holds_is_a_400_and_an_unknown_kind_a_404()
    {
        await using var api = await fixture.StartApiAsync();
        // One more than the 100 a batch holds.
        var tooMany = Batch([.. Enumerable.Range(0, 101).Select(_ => JobRequests.ChargePayment(Guid.NewGuid()))]);

        using var response = await PostBatchAsync(api, JobKinds.ChargePayment, tooMany);
        using var unknown = await PostBatchAsync(api, "mine-bitcoin", Batch([JobRequests.ChargePayment(Guid.NewGuid())]));

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(new HashSet<string>(["jobs"]), await response.ReadErrorFieldsAsync());
        await unknown.AssertProblemAsync(StatusCodes.Status404NotFound);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task A_job_larger_than_a_single_submission_may_be_is_a_400_naming_it()
    {
        await using var api = await fixture.StartApiAsync();
        // 300 KiB of payload: over the 256 KiB a single job's body may have, within a batch's 1 MiB.
        var large = JsonSerializer.Serialize(new
        {
            webhookId = Guid.NewGuid(),
            url = "https://hooks.example.com/orders",
            eventType = "order.paid",
            payload = new { text = new string('x', 300 * 1024) },
        });

        using var response = await PostBatchAsync(api, JobKinds.DeliverWebhook, Batch([JobRequests.DeliverWebhook(Guid.NewGuid()), large]));

        await response.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(new HashSet<string>(["jobs[1]"]), await response.ReadErrorFieldsAsync());
    }

    /// <summary>The server refuses bodies larger than any endpoint takes: a batch of the largest size still goes in.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_batch_of_a_hundred_jobs_and_exactly_the_largest_body_is_accepted(bool chunked)
    {
        await using var api = await fixture.StartApiAsync();
        string Job(int padding) => JsonSerializer.Serialize(new
        {
            webhookId = Guid.NewGuid(),
            url = "https://hooks.example.com/orders",
            eventType = "order.paid",
            payload = new { text = new string('x', padding) },
        });
        // The most jobs a batch holds, in a body of exactly a batch's limit.
        var jobs = Enumerable.Range(0, 100).Select(_ => Job(10_000)).ToList();
        // The last job's padding makes up what the body lacks of the limit.
        jobs[^1] = Job(10_000 + MaxBatchBodyBytes - Encoding.UTF8.GetByteCount(Batch(jobs)));
        var body = Batch(jobs);
        Assert.Equal(MaxBatchBodyBytes, Encoding.UTF8.GetByteCount(body));
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri($"/api/jobs/{JobKinds.DeliverWebhook}/batch", UriKind.Relative))
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
        request.Headers.TransferEncodingChunked = chunked;

        using var response = await api.Client.SendAsync(request);

        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        await using var db = fixture.CreateDbContext();
        Assert.Equal(100, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task Each_job_of_a_batch_takes_a_permit_of_the_clients_rate_limit()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "5",
        });
        string Jobs(int count) => Batch([.. Enumerable.Range(0, count).Select(_ => JobRequests.ChargePayment(Guid.NewGuid()))]);

        // A batch can never be larger than the bucket: told at once, not refused forever. Like any
        // refused submission, it took one permit.
        using var larger = await PostBatchAsync(api, JobKinds.ChargePayment, Jobs(6));
        using var rest = await PostBatchAsync(api, JobKinds.ChargePayment, Jobs(4));
        // The bucket is empty now; a refill of a few permits is not enough for another five.
        using var refused = await PostBatchAsync(api, JobKinds.ChargePayment, Jobs(5));

        await larger.AssertProblemAsync(StatusCodes.Status400BadRequest);
        Assert.Equal(HttpStatusCode.Accepted, rest.StatusCode);
        await refused.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        Assert.True(refused.Headers.RetryAfter?.Delta >= TimeSpan.FromSeconds(1));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(4, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task A_batch_refused_for_its_rate_once_read_spends_a_permit_so_resending_it_drains_the_bucket()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "4",
        });
        await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));

        // Three permits left, four needed: each is read and refused. More than three, since a permit refills each second.
        for (var i = 0; i < 6; i++)
        {
            using var batch = await PostBatchAsync(api, JobKinds.ChargePayment,
                Batch([.. Enumerable.Range(0, 4).Select(_ => JobRequests.ChargePayment(Guid.NewGuid()))]));
            await batch.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        }

        using var single = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        await single.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task A_batch_refused_for_its_rate_gets_in_when_retried_after_the_time_it_was_told()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "3",
        });
        string Jobs() => Batch([.. Enumerable.Range(0, 3).Select(_ => JobRequests.ChargePayment(Guid.NewGuid()))]);
        using (var first = await PostBatchAsync(api, JobKinds.ChargePayment, Jobs()))
        {
            Assert.Equal(HttpStatusCode.Accepted, first.StatusCode);
        }

        // Each refusal says how long until the batch's three permits are there; waiting that long must
        // be enough within a few attempts, however the attempts fall against the refill.
        var body = Jobs();
        var refusals = 0;
        while (true)
        {
            using var response = await PostBatchAsync(api, JobKinds.ChargePayment, body);
            if (response.StatusCode == HttpStatusCode.Accepted)
            {
                break;
            }

            await response.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            Assert.True(++refusals <= 3, $"Refused {refusals} times, each time retried after its Retry-After.");
            await Task.Delay(response.Headers.RetryAfter!.Delta!.Value);
        }

        Assert.True(refusals >= 1);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(6, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task With_the_broker_unreachable_a_batch_is_a_503_for_each_job_and_leaves_no_row()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:Port"] = ClosedPort.Number.ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ConnectTimeoutSeconds"] = "2",
        });
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(20));

        using var response = await PostBatchAsync(api, JobKinds.ChargePayment,
            Batch([JobRequests.ChargePayment(Guid.NewGuid()), JobRequests.ChargePayment(Guid.NewGuid())]), cancellationToken: deadline.Token);

        await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.NotNull(response.Headers.RetryAfter);
        var problem = await response.ReadJsonAsync();
        Assert.Equal("Some jobs of the batch were not accepted", problem.GetProperty("title").GetString());
        Assert.All(problem.GetProperty("jobs").EnumerateArray(), job => Assert.Equal(503, job.GetProperty("error").GetProperty("status").GetInt32()));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task With_the_database_unreachable_a_batch_answers_each_job_with_its_503()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = new Npgsql.NpgsqlConnectionStringBuilder(fixture.ConnectionString)
            {
                Host = "127.0.0.1",
                Port = ClosedPort.Number,
            }.ConnectionString,
        });

        using var response = await PostBatchAsync(api, JobKinds.ChargePayment,
            Batch([JobRequests.ChargePayment(Guid.NewGuid()), JobRequests.ChargePayment(Guid.NewGuid())]));

        await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.NotNull(response.Headers.RetryAfter);
        var jobs = (await response.ReadJsonAsync()).GetProperty("jobs").EnumerateArray().ToList();
        Assert.Equal([0, 1], jobs.Select(job => job.GetProperty("index").GetInt32()));
        Assert.All(jobs, job => Assert.Equal("Database unavailable", job.GetProperty("error").GetProperty("title").GetString()));
    }

    internal static string Batch(IEnumerable<string> jobs) => $$"""{"jobs":[{{string.Join(",", jobs)}}]}""";

    internal static async Task<HttpResponseMessage> PostBatchAsync(
        RunningApp api, string kind, string body, string? idempotencyKey = null, CancellationToken cancellationToken = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri($"/api/jobs/{kind}/batch", UriKind.Relative))
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
        if (idempotencyKey is not null)
        {
            request.Headers.TryAddWithoutValidation("Idempotency-Key", idempotencyKey);
        }

        return await api.Client.SendAsync(request, cancellationToken);
    }

    private static async Task<JobBatchAccepted> AcceptBatchAsync(RunningApp api, string body, string? idempotencyKey)
    {
        using var response = await PostBatchAsync(api, JobKinds.ChargePayment, body, idempotencyKey);
        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        return (await response.Content.ReadFromJsonAsync<JobBatchAccepted>())!;
    }
}
