using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A webhook URL whose host name is longer than DNS allows can never be delivered: .NET refuses to
/// resolve it, and that refusal reaches the sender as a connection error, which is transient, so such a
/// webhook was retried and redelivered for about an hour before it reached <c>_error</c>. The contract
/// now refuses it, before any attempt.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class WebhookHostNameLengthTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData("true")]
    [InlineData("false")]
    public async Task A_webhook_whose_host_name_is_too_long_to_resolve_is_dead_lettered_after_one_attempt_naming_its_url(string allowPrivateNetworks)
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:AllowPrivateNetworks", allowPrivateNetworks),
            ("Consumers:DeliverWebhook:RetryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var host = string.Join('.', Enumerable.Repeat(new string('a', 60), 5)) + ".example";
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = new Uri($"https://{host}/hooks"),
            EventType = "invoice.created",
            Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().WithoutRequestBody().SingleOrDefaultAsync(j => j.BusinessKey == webhook.WebhookId.ToString());
            Assert.NotNull(job);
            Assert.True(job.Status is JobStatus.DeadLettered or JobStatus.RetryScheduled, job.Status);
            Assert.Equal(JobStatus.DeadLettered, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Contains("url: Its host name must be at most 253 characters", job.LastError, StringComparison.Ordinal);
        });
    }
}
