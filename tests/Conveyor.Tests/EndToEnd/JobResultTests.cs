using System.Net;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.EndToEnd;

/// <summary>
/// <c>GET /api/jobs/{jobId}/result</c>: what a succeeded job did, for each kind, read from the rows its effect
/// wrote; a 409 naming the status for any other job.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class JobResultTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private FakePaymentGateway _gateway = null!;
    private FakeWebhookReceiver _receiver = null!;
    private RunningApp _worker = null!;
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
        _receiver = await FakeWebhookReceiver.StartAsync();
        _worker = await fixture.StartWorkerAsync(WorkerSettings.With(_gateway));
        _api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Webhooks:AllowPrivateNetworks"] = "true" });
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        await _worker.DisposeAsync();
        await _receiver.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    [Fact]
    public async Task A_succeeded_job_of_each_kind_answers_what_it_did()
    {
        var paymentId = Guid.NewGuid();
        var charge = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JsonSerializer.Serialize(new { paymentId, accountId = "acct-result", amountMinor = 1999, currency = "EUR" }));
        var second = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JsonSerializer.Serialize(new { paymentId = Guid.NewGuid(), accountId = "acct-result", amountMinor = 1, currency = "EUR" }));
        var other = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JsonSerializer.Serialize(new { paymentId = Guid.NewGuid(), accountId = "acct-other", amountMinor = 5000, currency = "USD" }));
        _receiver.AnswerWith = HttpStatusCode.Accepted;
        var webhookId = Guid.NewGuid();
        var webhook = await _api.Client.AcceptJobAsync(JobKinds.DeliverWebhook, JsonSerializer.Serialize(new
        {
            webhookId,
            url = _receiver.Url("/hooks/t0p-s3cret-path?token=s3cret-token"),
            eventType = "order.paid",
            payload = new { orderId = 7 },
        }));
        foreach (var job in new[] { charge, second, other, webhook })
        {
            await WaitForAsync(job.JobId, JobStatus.Succeeded);
        }

        var reportId = Guid.NewGuid();
        var report = await _api.Client.AcceptJobAsync(JobKinds.GenerateReport,
            JsonSerializer.Serialize(new { reportId, accountId = "acct-result", pageSize = 1 }));
        await WaitForAsync(report.JobId, JobStatus.Succeeded);

        using var chargedResult = await ReadResultAsync(charge.JobId);
        var charged = chargedResult.RootElement;
        Assert.Equal((charge.JobId, JobKinds.ChargePayment, paymentId.ToString()),
            (charged.GetProperty("jobId").GetGuid(), charged.GetProperty("kind").GetString(), charged.GetProperty("businessKey").GetString()));
        Assert.Equal(["charge"], ResultMembers(charged));
        var gatewayCharge = Assert.Single(_gateway.Charges, c => c.AmountMinor == 1999);
        var chargeResult = charged.GetProperty("charge");
        Assert.Equal((paymentId, "acct-result", 1999L, "EUR", gatewayCharge.Id), (
            chargeResult.GetProperty("paymentId").GetGuid(),
            chargeResult.GetProperty("accountId").GetString(),
            chargeResult.GetProperty("amountMinor").GetInt64(),
            chargeResult.GetProperty("currency").GetString(),
            chargeResult.GetProperty("gatewayChargeId").GetString()));
        await using (var db = fixture.CreateDbContext())
        {
            var entry = await db.Ledger.SingleAsync(l => l.PaymentId == paymentId);
            Assert.Equal(entry.ChargedAt, chargeResult.GetProperty("chargedAt").GetDateTimeOffset());
        }

        using var delivered = await ReadResultAsync(webhook.JobId);
        Assert.Equal(["webhook"], ResultMembers(delivered.RootElement));
        var webhookResult = delivered.RootElement.GetProperty("webhook");
        Assert.Equal((webhookId, "order.paid", $"http://127.0.0.1:{_receiver.BaseAddress.Port}", 202), (
            webhookResult.GetProperty("webhookId").GetGuid(),
            webhookResult.GetProperty("eventType").GetString(),
            webhookResult.GetProperty("receiverOrigin").GetString(),
            webhookResult.GetProperty("statusCode").GetInt32()));
        // The URL's path and query are not shown: they often hold the receiver's secret.
        var text = delivered.RootElement.GetRawText();
        Assert.DoesNotContain("s3cret", text, StringComparison.Ordinal);
        Assert.Single(_receiver.Deliveries, d => d.Path == "/hooks/t0p-s3cret-path");

        using var reported = await ReadResultAsync(report.JobId);
        Assert.Equal(["report"], ResultMembers(reported.RootElement));
        var reportResult = reported.RootElement.GetProperty("report");
        Assert.Equal((reportId, "acct-result", 2L), (
            reportResult.GetProperty("reportId").GetGuid(),
            reportResult.GetProperty("accountId").GetString(),
            reportResult.GetProperty("rowsScanned").GetInt64()));
        Assert.Equal(JsonValueKind.Null, reportResult.GetProperty("currency").ValueKind);
        var total = Assert.Single(reportResult.GetProperty("totals").EnumerateArray());
        // In the documented order, not the one jsonb stores its members in (by length: count, currency, totalMinor).
        Assert.Equal(["currency", "count", "totalMinor"], total.EnumerateObject().Select(p => p.Name));
        Assert.Equal(("EUR", 2L, 2000m), (
            total.GetProperty("currency").GetString(), total.GetProperty("count").GetInt64(), total.GetProperty("totalMinor").GetDecimal()));
        Assert.True(reportResult.GetProperty("completedAt").GetDateTimeOffset() <= reported.RootElement.GetProperty("finishedAt").GetDateTimeOffset());
    }

    [Fact]
    public async Task A_job_that_has_not_succeeded_is_a_409_naming_its_status_and_one_whose_record_is_gone_a_404()
    {
        _gateway.FailEverythingWith = HttpStatusCode.UnprocessableEntity;
        var declined = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        var scheduled = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));
        await WaitForAsync(declined.JobId, JobStatus.DeadLettered);

        foreach (var (job, status) in new[] { (declined, JobStatus.DeadLettered), (scheduled, JobStatus.Scheduled) })
        {
            using var response = await GetResultAsync(job.JobId);
            await response.AssertProblemAsync(409);
            var problem = await response.ReadJsonAsync();
            Assert.Equal(("Job has no result", status), (problem.GetProperty("title").GetString(), problem.GetProperty("jobStatus").GetString()));
            Assert.Contains($"is {status}", problem.GetProperty("detail").GetString(), StringComparison.Ordinal);
        }

        using (var unknown = await GetResultAsync(Guid.NewGuid()))
        {
            await unknown.AssertProblemAsync(404);
            Assert.Equal("Job not found", (await unknown.ReadJsonAsync()).GetProperty("title").GetString());
        }

        using (var malformed = await _api.Client.GetAsync(new Uri("/api/jobs/not-a-job/result", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.BadRequest, malformed.StatusCode);
            Assert.Equal(["jobId"], await malformed.ReadErrorFieldsAsync());
        }

        _gateway.FailEverythingWith = null;
        var paymentId = Guid.NewGuid();
        var charged = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        await WaitForAsync(charged.JobId, JobStatus.Succeeded);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Ledger.Where(l => l.PaymentId == paymentId).ExecuteDeleteAsync());
        }

        using var gone = await GetResultAsync(charged.JobId);
        await gone.AssertProblemAsync(404);
        Assert.Equal("Result not found", (await gone.ReadJsonAsync()).GetProperty("title").GetString());
    }

    private static string[] ResultMembers(JsonElement result) =>
        [.. result.EnumerateObject().Select(p => p.Name).Where(name => name is "charge" or "webhook" or "report")];

    private Task<HttpResponseMessage> GetResultAsync(Guid jobId) =>
        _api.Client.GetAsync(new Uri($"/api/jobs/{jobId}/result", UriKind.Relative));

    private async Task<JsonDocument> ReadResultAsync(Guid jobId)
    {
        using var response = await GetResultAsync(jobId);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{(int)response.StatusCode}: {body}");
        return JsonDocument.Parse(body);
    }

    private async Task WaitForAsync(Guid jobId, string status) =>
        await Eventually.AssertAsync(async () => Assert.Equal(status, (await _api.Client.GetJobAsync(jobId)).Status));
}
