using System.Net;
using System.Net.Http.Headers;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>Every error-queue endpoint needs an API key with the admin scope.</summary>
[Collection(SecondLaneCollection.Name)]
public sealed class ErrorQueueAuthTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
        _api = await fixture.StartApiAsync(ErrorQueueKit.ApiSettings());
        await using var broker = await TestBroker.ConnectAsync(fixture);
        await broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    public static TheoryData<string, string> Endpoints => new()
    {
        { "GET", "/api/error-queues" },
        { "GET", "/api/error-queues/charge-payment_error/messages" },
        { "GET", "/api/error-queues/charge-payment_error/groups" },
        { "POST", "/api/error-queues/charge-payment_error/move" },
        { "POST", "/api/error-queues/charge-payment_error/purge" },
        { "GET", "/api/operations" },
        { "GET", $"/api/operations/{Guid.Empty}" },
        { "GET", "/api/audit" },
    };

    [Theory]
    [MemberData(nameof(Endpoints))]
    public async Task Without_a_key_or_with_an_unknown_key_the_answer_is_401(string method, string path)
    {
        using var anonymous = ErrorQueueKit.Client(_api.BaseAddress, key: null);
        using var unknown = ErrorQueueKit.Client(_api.BaseAddress, key: "not-a-configured-key-000000000000");
        using var malformed = ErrorQueueKit.Client(_api.BaseAddress, key: null);
        malformed.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", "b3BzOmFkbWlu");

        foreach (var client in new[] { anonymous, unknown, malformed })
        {
            using var response = await SendAsync(client, method, path);
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Contains(response.Headers.WwwAuthenticate, h => h.Scheme == "Bearer");
            Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        }

        await AssertNothingMovedAsync();
    }

    [Theory]
    [MemberData(nameof(Endpoints))]
    public async Task A_key_without_the_admin_scope_is_403(string method, string path)
    {
        using var reader = ErrorQueueKit.Client(_api.BaseAddress, ErrorQueueKit.ReaderKey);

        using var response = await SendAsync(reader, method, path);

        Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
        Assert.Equal("application/problem+json", response.Content.Headers.ContentType?.MediaType);
        await AssertNothingMovedAsync();
    }

    [Fact]
    public async Task The_admin_key_works_as_a_bearer_token_and_as_X_Api_Key()
    {
        using var bearer = ErrorQueueKit.Client(_api.BaseAddress);
        using var header = ErrorQueueKit.Client(_api.BaseAddress, key: null);
        header.DefaultRequestHeaders.Add("X-Api-Key", ErrorQueueKit.AdminKey);

        foreach (var client in new[] { bearer, header })
        {
            using var response = await client.GetAsync(new Uri("/api/audit", UriKind.Relative));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }
    }

    [Fact]
    public async Task A_short_key_in_the_configuration_stops_the_Api_from_starting()
    {
        var settings = ErrorQueueKit.ApiSettings();
        settings["Auth:ApiKeys:0:Key"] = "short";

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartApiAsync(settings));

        Assert.Contains("Auth:ApiKeys:0:Key", failure.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("short", failure.Message, StringComparison.Ordinal);
    }

    private static Task<HttpResponseMessage> SendAsync(HttpClient client, string method, string path)
    {
        var request = new HttpRequestMessage(new HttpMethod(method), new Uri(path, UriKind.Relative));
        if (method == "POST")
        {
            request.Content = new StringContent("""{"confirm":"charge-payment_error"}""", System.Text.Encoding.UTF8, "application/json");
        }

        return client.SendAsync(request);
    }

    private async Task AssertNothingMovedAsync()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        Assert.Equal(1u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }
}
