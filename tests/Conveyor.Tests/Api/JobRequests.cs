using Conveyor.Api.Jobs;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary>Request bodies and calls for the jobs endpoints, kept as raw JSON so tests control every byte.</summary>
internal static class JobRequests
{
    public static string ChargePayment(Guid paymentId, long amountMinor = 1250, string currency = "EUR") =>
        JsonSerializer.Serialize(new { paymentId, accountId = "acct-42", amountMinor, currency });

    /// <summary>
    /// The command of <see cref="ChargePayment"/> in other bytes: its fields in another order, spaced out.
    /// Another body for the Api, the same command for the worker's inbox and the Api's business-id check.
    /// </summary>
    public static string ChargePaymentReordered(Guid paymentId, long amountMinor = 1250, string currency = "EUR") =>
        $$"""{ "currency": "{{currency}}", "amountMinor": {{amountMinor}}, "accountId": "acct-42", "paymentId": "{{paymentId}}" }""";

    /// <summary>A charge to run at <paramref name="runAt"/>, sent with its offset as ISO 8601.</summary>
    public static string ScheduledChargePayment(Guid paymentId, DateTimeOffset runAt) =>
        JsonSerializer.Serialize(new { paymentId, accountId = "acct-42", amountMinor = 1250, currency = "EUR", runAt = runAt.ToString("O") });

    public static string DeliverWebhook(Guid webhookId) =>
        JsonSerializer.Serialize(new
        {
            webhookId,
            url = "https://hooks.example.com/orders",
            eventType = "order.paid",
            payload = new { orderId = 7, paid = true, note = (string?)null },
        });

    public static string GenerateReport(Guid reportId) =>
        JsonSerializer.Serialize(new { reportId, currency = "USD", pageSize = 500 });

    public static Task<HttpResponseMessage> PostJobAsync(
        this HttpClient client, string kind, string json, string? idempotencyKey = null, CancellationToken cancellationToken = default) =>
        client.PostJobAsync(kind, new StringContent(json, Encoding.UTF8, "application/json"), idempotencyKey, cancellationToken);

    public static async Task<HttpResponseMessage> PostJobAsync(
        this HttpClient client, string kind, HttpContent content, string? idempotencyKey = null, CancellationToken cancellationToken = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri($"/api/jobs/{kind}", UriKind.Relative)) { Content = content };
        if (idempotencyKey is not null)
        {
            request.Headers.TryAddWithoutValidation("Idempotency-Key", idempotencyKey);
        }

        return await client.SendAsync(request, cancellationToken);
    }

    /// <summary>Submits a job and asserts it was accepted.</summary>
    public static async Task<JobAccepted> AcceptJobAsync(this HttpClient client, string kind, string json)
    {
        using var response = await client.PostJobAsync(kind, json);
        Assert.True(response.StatusCode == HttpStatusCode.Accepted,
            $"{kind} answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        var accepted = await response.Content.ReadFromJsonAsync<JobAccepted>();
        Assert.NotNull(accepted);
        return accepted;
    }

    public static async Task<JobDetails> GetJobAsync(this HttpClient client, Guid jobId)
    {
        using var response = await client.GetAsync(new Uri($"/api/jobs/{jobId}", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var job = await response.Content.ReadFromJsonAsync<JobDetails>();
        Assert.NotNull(job);
        return job;
    }

    public static Task<HttpResponseMessage> CancelJobAsync(this HttpClient client, Guid jobId) =>
        client.DeleteAsync(new Uri($"/api/jobs/{jobId}", UriKind.Relative));

    public static async Task<JsonElement> ReadJsonAsync(this HttpResponseMessage response) =>
        JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;

    /// <summary>The field names of a validation problem's <c>errors</c>.</summary>
    public static async Task<IReadOnlySet<string>> ReadErrorFieldsAsync(this HttpResponseMessage response)
    {
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await response.ReadJsonAsync();
        return problem.GetProperty("errors").EnumerateObject().Select(e => e.Name).ToHashSet(StringComparer.Ordinal);
    }

    public static async Task AssertProblemAsync(this HttpResponseMessage response, int status)
    {
        Assert.Equal(status, (int)response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        var problem = await response.ReadJsonAsync();
        Assert.Equal(status, problem.GetProperty("status").GetInt32());
        Assert.False(problem.TryGetProperty("exception", out _));
    }

    public static StringContent Json(string json, string mediaType) =>
        new(json, Encoding.UTF8, new MediaTypeHeaderValue(mediaType));
}
