using System.Net;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Microsoft.AspNetCore.Builder;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Infrastructure;

/// <summary>
/// One webhook command published twice, as two messages, to a worker whose receiver answers 500 and whose redeliveries
/// wait ten minutes: the second copy fails at the same count as the first, and its redelivery folds into the row the
/// first stored (<c>RedeliveryStore</c>'s dedupe key).
/// </summary>
public static class FoldedWebhookCopies
{
    private const string WebhookExchange = "Conveyor.Contracts.Webhooks:DeliverWebhook";
    private const string WebhookUrn = "urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook";

    /// <summary>
    /// Starts that worker, <paramref name="receiver"/> answering 500: no in-memory retry, three redeliveries ten minutes
    /// ahead, no kill switch; then <paramref name="overrides"/>.
    /// </summary>
    public static async Task<RunningApp> StartWorkerAsync(
        ConveyorFixture fixture, FakeWebhookReceiver receiver, Action<WebApplicationBuilder>? configure = null, params (string Key, string Value)[] overrides)
    {
        receiver.AnswerWith = HttpStatusCode.InternalServerError;
        var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:RedeliveryMaxDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:KillSwitchTripPercent", "0")).Override(overrides), configure);
        await fixture.DeclareAsync("deliver-webhook_error");
        return worker;
    }

    /// <summary>
    /// Publishes the command for <paramref name="receiver"/> twice, the second once the first's redelivery is stored and
    /// <paramref name="betweenCopies"/> is done; returns its webhook id and its job once the second copy failed too.
    /// </summary>
    public static async Task<(Guid WebhookId, Job Job)> PublishTwiceAsync(
        ConveyorFixture fixture, FakeWebhookReceiver receiver, Func<Task>? betweenCopies = null)
    {
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var webhookId = Guid.NewGuid();
        var command = new { webhookId, url = receiver.Url(), eventType = "invoice.created", payload = new { invoice = 7 } };

        await producer.PublishEnvelopeAsync(WebhookExchange, WebhookUrn, command);
        await WaitForRetryScheduledAsync(fixture, webhookId, attempts: 1);
        if (betweenCopies is not null)
        {
            await betweenCopies();
        }

        // The same command again, as a new message: it claims the job and fails like the first.
        await producer.PublishEnvelopeAsync(WebhookExchange, WebhookUrn, command);
        return (webhookId, await WaitForRetryScheduledAsync(fixture, webhookId, attempts: 2));
    }

    private static async Task<Job> WaitForRetryScheduledAsync(ConveyorFixture fixture, Guid webhookId, int attempts)
    {
        Job job = null!;
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Kind == JobKinds.DeliverWebhook && j.BusinessKey == webhookId.ToString());
            Assert.Equal((JobStatus.RetryScheduled, attempts), (job.Status, job.Attempts));
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));
        return job;
    }
}
