using System.Globalization;
using System.Net;
using System.Text.Json;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// An error-queue answer that tells its caller to retry (the broker unreachable) says when, in
/// <c>Retry-After</c>, as a submission's does: a client (the CLI reads it) otherwise cannot know.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class ErrorQueueRetryAfterTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData("/api/error-queues")]
    [InlineData("/api/error-queues/charge-payment_error/messages")]
    [InlineData("/api/error-queues/charge-payment_error/groups")]
    public async Task A_broker_that_cannot_be_read_is_a_503_with_Retry_After(string path)
    {
        var settings = ErrorQueueKit.ApiSettings();
        // RabbitMQ's management API refuses connections: a port nothing listens on.
        settings["RabbitMq:ManagementPort"] = ClosedPort.Number.ToString(CultureInfo.InvariantCulture);
        await using var api = await fixture.StartApiAsync(settings);
        using var admin = ErrorQueueKit.Client(api.BaseAddress);

        using var answer = await admin.GetAsync(new Uri(path, UriKind.Relative));

        var text = await answer.Content.ReadAsStringAsync();
        Assert.True(answer.StatusCode == HttpStatusCode.ServiceUnavailable, $"{(int)answer.StatusCode}: {text}");
        Assert.Equal("Message broker unavailable", JsonDocument.Parse(text).RootElement.GetProperty("title").GetString());
        Assert.Equal(TimeSpan.FromSeconds(5), answer.Headers.RetryAfter?.Delta);
    }
}
