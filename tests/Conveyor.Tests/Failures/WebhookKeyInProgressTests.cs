using System.Net;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Webhooks;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A webhook receiver that keeps idempotency keys answers 409 while an earlier delivery with the key is
/// still in progress. That delivery may well succeed: the job keeps trying with the key until it gets the
/// receiver's answer, where a 409 taken for a permanent failure dead-lettered a webhook its receiver had.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class WebhookKeyInProgressTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_webhook_still_in_progress_at_its_receiver_when_its_attempt_timed_out_is_delivered_once_the_receiver_has_it()
    {
        var receiverWorking = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.HoldDeliveries = receiverWorking.Task;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            // The first attempt gives up on the held delivery; the next ones meet it in progress.
            ("Webhooks:TimeoutSeconds", "1"),
            ("Consumers:DeliverWebhook:RetryLimit", "2"),
            ("Consumers:DeliverWebhook:RetryMinIntervalMilliseconds", "50"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "5"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "200")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());
        var key = webhook.WebhookId.ToString();
        try
        {
            await publisher.PublishAsync(webhook);

            await Eventually.AssertAsync(() => Assert.True(receiver.InProgressConflictsFor(key) > 0));
        }
        finally
        {
            // The receiver finishes the first delivery.
            receiverWorking.TrySetResult();
        }

        var job = await fixture.WaitForSettledJobAsync(key);

        Assert.True(job.Status == JobStatus.Succeeded, job.LastError);
    }

    [Theory]
    [InlineData(HttpStatusCode.Conflict, true)]
    [InlineData(HttpStatusCode.MisdirectedRequest, true)]
    [InlineData(HttpStatusCode.Gone, false)]
    [InlineData(HttpStatusCode.UnprocessableEntity, false)]
    public async Task A_webhook_receivers_409_is_transient_and_its_other_4xx_are_permanent(HttpStatusCode status, bool transient)
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = status;
        using var http = new HttpClient();
        var options = Options.Create(new WebhookOptions { SigningSecret = WorkerSettings.SigningSecret });
        var sender = new WebhookSender(http, options, new WebhookSigningKeys(options), TimeProvider.System, NullLogger<WebhookSender>.Instance);

        var failure = await Assert.ThrowsAnyAsync<Exception>(() => sender.SendAsync(
            Guid.NewGuid(), "key", receiver.Url(), "invoice.created", """{"invoice":7}"""u8.ToArray(), CancellationToken.None));

        Assert.Equal(transient, FailureClassifier.IsTransient(failure));
        Assert.Contains($"answered {(int)status}", failure.Message, StringComparison.Ordinal);
    }

    private static DeliverWebhook Webhook(Uri url) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = url,
        EventType = "invoice.created",
        Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
    };
}
