using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A webhook URL naming port 0 can never be delivered: no TCP connection can be made to it. Each connect
/// failed as a network failure, which is transient, so such a webhook was retried and redelivered for
/// about an hour before it reached <c>_error</c>; the contract now refuses it, before any attempt.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class WebhookPortZeroTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_webhook_to_port_0_published_directly_is_dead_lettered_after_one_attempt_naming_its_url()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = new Uri("http://127.0.0.1:0/hooks"),
            EventType = "invoice.created",
            Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().WithoutRequestBody().SingleOrDefaultAsync(j => j.BusinessKey == webhook.WebhookId.ToString());
            Assert.NotNull(job);
            Assert.Equal(JobStatus.DeadLettered, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Contains("url: Must not name port 0", job.LastError, StringComparison.Ordinal);
        });
    }
}
