using System.Net;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A webhook receiver that will never answer a delivery otherwise (a status saying it does not do what was
/// asked) is dead-lettered after one attempt with the reason in the job's last error, as Svix and Stripe
/// stop at once on such answers; before, each was retried and redelivered for an hour as if it might pass.
/// Network trouble that may pass stays transient.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class WebhookUnusableAnswerTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(HttpStatusCode.NotImplemented, "answered 501 NotImplemented")]
    [InlineData(HttpStatusCode.HttpVersionNotSupported, "answered 505 HttpVersionNotSupported")]
    public async Task A_receiver_answering_a_status_it_will_always_answer_is_dead_lettered_after_one_attempt(HttpStatusCode status, string reason)
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = status;
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);

        var job = await DeadLetteredAsync(webhook);
        Assert.Contains(reason, job.LastError, StringComparison.Ordinal);
        Assert.Single(receiver.Deliveries);
    }

    /// <summary>Retries in memory none, redeliveries far beyond the test: a transient failure leaves the job retry-scheduled after one attempt.</summary>
    private Task<RunningApp> StartWorkerAsync() => fixture.StartWorkerAsync(WorkerSettings.With().Override(
        ("Consumers:DeliverWebhook:RetryLimit", "0"),
        ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
        ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")));

    /// <summary>One attempt, then _error: no redelivery stored.</summary>
    private async Task<Job> DeadLetteredAsync(DeliverWebhook webhook)
    {
        var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.DeadLettered, attempts: 1);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        return job;
    }

    private static DeliverWebhook Webhook(Uri url) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = url,
        EventType = "invoice.created",
        Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
    };
}
