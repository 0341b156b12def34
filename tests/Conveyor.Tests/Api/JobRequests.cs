using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary>Request bodies and calls for the jobs endpoints, kept as raw JSON so tests control every byte.</summary>
internal static class JobRequests
{
    public static string ChargePayment(Guid paymentId, long amountMinor = 1250, string currency = "EUR") =>
        JsonSerializer.Serialize(new { paymentId, accountId = "acct-42", amountMinor, currency });

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
