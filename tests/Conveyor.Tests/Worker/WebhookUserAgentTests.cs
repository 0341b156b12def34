using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>
/// Every delivery says what sent it. The bot protection in front of many receivers answers 403 to a
/// request without a <c>User-Agent</c>, and a 403 is permanent: such a receiver got no webhook at all,
/// each one dead-lettered after its first attempt.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookUserAgentTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_receiver_that_refuses_an_empty_user_agent_gets_the_delivery_with_the_workers_user_agent()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.RefusesAnEmptyUserAgent = true;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "order.paid",
            Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.Succeeded);
        var delivery = Assert.Single(receiver.Deliveries);
        var userAgent = Assert.Contains("User-Agent", delivery.Headers);
        Assert.Matches(@"^Conveyor-Webhooks/[0-9A-Za-z.+-]+ \(\+Conveyor\)$", userAgent);
        // Fixed and honest: nothing about the machine it runs on, nothing secret.
        Assert.DoesNotContain(Environment.MachineName, userAgent, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(WorkerSettings.SigningSecret, userAgent, StringComparison.Ordinal);
    }
}
