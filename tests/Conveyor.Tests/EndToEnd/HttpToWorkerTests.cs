using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Tests.Observability;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.EndToEnd;

/// <summary>The whole path: HTTP request → Api → RabbitMQ → Worker → gateway and database → job status.</summary>
[Collection(AloneCollection.Name)]
public sealed class HttpToWorkerTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
        _worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        _api = await fixture.StartApiAsync();
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        await _worker.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    [Fact]
    public async Task A_charge_posted_over_http_is_charged_once_recorded_once_and_shows_succeeded()
    {
        var paymentId = Guid.NewGuid();

        using var response = await _api.Client.PostAsJsonAsync("/api/jobs/charge-payment",
            new { paymentId, accountId = "acct-e2e", amountMinor = 1999, currency = "EUR" });

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var accepted = await response.Content.ReadFromJsonAsync<JsonElement>();
        var jobId = accepted.GetProperty("jobId").GetGuid();
        Assert.Equal("queued", accepted.GetProperty("status").GetString());
        Assert.Equal($"/api/jobs/{jobId}", response.Headers.Location?.ToString());

        var job = await WaitForStatusAsync(jobId, "succeeded");
        Assert.Equal("charge-payment", job.GetProperty("kind").GetString());
        Assert.Equal(1, job.GetProperty("attempts").GetInt32());
        Assert.Equal(JsonValueKind.Null, job.GetProperty("lastError").ValueKind);

        Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString()));
        var charge = Assert.Single(_gateway.Charges);
        Assert.Equal(("acct-e2e", 1999L, "EUR"), (charge.AccountId, charge.AmountMinor, charge.Currency));
        await using var db = fixture.CreateDbContext();
        var ledger = await db.Ledger.SingleAsync();
        Assert.Equal((paymentId, charge.Id), (ledger.PaymentId, ledger.GatewayChargeId));
    }

    [Fact]
    public async Task A_declined_payment_is_dead_lettered_with_the_gateway_error_visible_in_its_status()
    {
        _gateway.FailEverythingWith = HttpStatusCode.UnprocessableEntity;

        using var response = await _api.Client.PostAsJsonAsync("/api/jobs/charge-payment",
            new { paymentId = Guid.NewGuid(), accountId = "acct-declined", amountMinor = 500, currency = "USD" });
        var jobId = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("jobId").GetGuid();

        var job = await WaitForStatusAsync(jobId, "dead-lettered");
        Assert.Contains("422", job.GetProperty("lastError").GetString(), StringComparison.Ordinal);
        // A permanent failure is not retried.
        Assert.Equal(1, job.GetProperty("attempts").GetInt32());
        Assert.Equal(1, _gateway.TotalRequests);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Ledger.CountAsync());
    }

    [Fact]
    public async Task A_get_with_waitSeconds_answers_once_the_job_has_ended()
    {
        var charging = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var release = new ManualResetEventSlim();
        _gateway.OnRequest = () =>
        {
            charging.TrySetResult();
            release.Wait(TimeSpan.FromSeconds(60));
        };
        using var response = await _api.Client.PostAsJsonAsync("/api/jobs/charge-payment",
            new { paymentId = Guid.NewGuid(), accountId = "acct-wait", amountMinor = 700, currency = "EUR" });
        var jobId = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("jobId").GetGuid();
        await charging.Task.WaitAsync(TimeSpan.FromSeconds(60));

        // The charge is held at the gateway: a short wait ends with the job not yet ended.
        var early = await _api.Client.GetFromJsonAsync<JsonElement>($"/api/jobs/{jobId}?waitSeconds=1");
        Assert.Equal("queued", early.GetProperty("status").GetString());

        var waiting = _api.Client.GetFromJsonAsync<JsonElement>($"/api/jobs/{jobId}?waitSeconds=30");
        // The job ends only once the wait is under way: the Api counts it in flight, beside the scrape
        // that asks (GETs only: the charge held at the in-process gateway is a POST).
        await Eventually.AssertAsync(async () =>
        {
            var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
            Assert.True(PrometheusText.Sum(metrics, "http_server_active_requests", "http_request_method=\"GET\"") >= 2, "the wait is not in flight yet");
        });
        release.Set();
        var ended = await waiting;

        Assert.Equal("succeeded", ended.GetProperty("status").GetString());
        Assert.Equal(jobId, ended.GetProperty("jobId").GetGuid());
        Assert.Single(_gateway.Charges);
        Assert.Equal(1, _gateway.TotalRequests);
    }

    [Fact]
    public async Task A_batch_of_charges_is_charged_once_each_and_every_job_succeeds()
    {
        var paymentIds = Enumerable.Range(0, 20).Select(_ => Guid.NewGuid()).ToList();
        var body = new { jobs = paymentIds.Select((paymentId, i) => new { paymentId, accountId = $"acct-batch-{i}", amountMinor = 100 + i, currency = "EUR" }) };

        using var response = await _api.Client.PostAsJsonAsync("/api/jobs/charge-payment/batch", body);

        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var jobs = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("jobs").EnumerateArray().ToList();
        Assert.Equal(paymentIds.Count, jobs.Count);
        foreach (var job in jobs)
        {
            await WaitForStatusAsync(job.GetProperty("jobId").GetGuid(), "succeeded");
        }

        Assert.All(paymentIds, paymentId => Assert.Equal(1, _gateway.RequestsFor(paymentId.ToString())));
        Assert.Equal(paymentIds.Count, _gateway.Charges.Count);
        Assert.Equal(100 + 7, _gateway.Charges.Single(c => c.AccountId == "acct-batch-7").AmountMinor);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(paymentIds.Count, await db.Ledger.CountAsync());
    }

    [Theory]
    [InlineData("abc")]
    [InlineData("-1")]
    [InlineData("31")]
    [InlineData("1.5")]
    public async Task A_bad_waitSeconds_is_a_400_naming_it(string waitSeconds)
    {
        using var response = await _api.Client.GetAsync(new Uri($"/api/jobs/{Guid.NewGuid()}?waitSeconds={waitSeconds}", UriKind.Relative));

        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var problem = await response.Content.ReadFromJsonAsync<JsonElement>();
        Assert.Equal(["waitSeconds"], problem.GetProperty("errors").EnumerateObject().Select(e => e.Name));
    }

    private async Task<JsonElement> WaitForStatusAsync(Guid jobId, string status)
    {
        JsonElement job = default;
        await Eventually.AssertAsync(async () =>
        {
            job = await _api.Client.GetFromJsonAsync<JsonElement>($"/api/jobs/{jobId}");
            Assert.Equal(status, job.GetProperty("status").GetString());
        });
        return job;
    }
}
