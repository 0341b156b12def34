using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// Webhook URLs that can never be delivered, published directly (no Api to refuse them): port 0, to which
/// no TCP connection can be made, and a host name longer than DNS allows, which .NET refuses to resolve.
/// Either failure reached the sender as a connection error, which is transient, so such a webhook was
/// retried and redelivered for about an hour before it reached <c>_error</c>. The contract now refuses
/// them, before any attempt, whether or not private networks are allowed.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookUndeliverableUrlTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>Five labels of 60 characters: each label within DNS's 63, the whole past its 253.</summary>
    private static readonly string LongHost = string.Join('.', Enumerable.Repeat(new string('a', 60), 5)) + ".example";

    public static TheoryData<string, string?, string> Urls => new()
    {
        { "http://127.0.0.1:0/hooks", null, "url: Must not name port 0" },
        { $"https://{LongHost}/hooks", "true", "url: Its host name must be at most 253 characters" },
        { $"https://{LongHost}/hooks", "false", "url: Its host name must be at most 253 characters" },
    };

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [MemberData(nameof(Urls))]
    public async Task A_webhook_to_an_undeliverable_url_published_directly_is_dead_lettered_after_one_attempt_naming_its_url(
        string url, string? allowPrivateNetworks, string error)
    {
        var settings = WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"));
        if (allowPrivateNetworks is not null)
        {
            settings = settings.Override(("Webhooks:AllowPrivateNetworks", allowPrivateNetworks));
        }

        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = new Uri(url),
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
            Assert.Contains(error, job.LastError, StringComparison.Ordinal);
        });
    }
}
