using Conveyor.Tests.Infrastructure;
using System.Net;
using System.Text.Json;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class ApiHostTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync() => _api = await fixture.StartApiAsync();

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task OpenApi_document_describes_the_jobs_endpoints()
    {
        using var response = await _api.Client.GetAsync(new Uri("/openapi/v1.json", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        using var document = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        var paths = document.RootElement.GetProperty("paths");
        Assert.True(paths.TryGetProperty("/api/jobs/{kind}", out var submit));
        Assert.True(submit.TryGetProperty("post", out _));
        Assert.True(paths.TryGetProperty("/api/jobs/{jobId}", out _));
    }

    [Fact]
    public async Task Liveness_answers_200()
    {
        using var response = await _api.Client.GetAsync(new Uri("/health/live", UriKind.Relative));

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    [Fact]
    public async Task Readiness_answers_200_once_bus_and_database_are_up()
    {
        await _api.WaitUntilReadyAsync(TimeSpan.FromSeconds(30));
    }
}
