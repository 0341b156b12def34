using System.Text;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A receiver's redirect is never followed (the destination check would not see where it goes) and is
/// permanent: the job is dead-lettered after one attempt. Its last error said only the status, so an
/// operator could not tell where the receiver had moved; it now names the <c>Location</c>, made printable
/// and cut short as the receiver's other text is.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookRedirectTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_redirect_is_dead_lettered_after_one_attempt_with_its_status_and_location_in_the_last_error()
    {
        await using var moved = RawRedirectReceiver.Start(308, "https://new.example/hook"u8.ToArray());
        await using var relative = RawRedirectReceiver.Start(301, "/v2/hook?tenant=7"u8.ToArray());
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var toMoved = Webhook(moved.Url());
        var toRelative = Webhook(relative.Url());

        await publisher.PublishAsync(toMoved);
        await publisher.PublishAsync(toRelative);

        var movedJob = await DeadLetteredAsync(toMoved);
        Assert.Contains("answered 308 PermanentRedirect (moved to https://new.example/hook, not followed)", movedJob.LastError, StringComparison.Ordinal);
        // A relative Location as the URL it names, which is what the webhook's URL would be corrected to.
        var relativeJob = await DeadLetteredAsync(toRelative);
        Assert.Contains("answered 301 ", relativeJob.LastError, StringComparison.Ordinal);
        Assert.Contains($"(moved to {relative.BaseAddress}v2/hook?tenant=7, not followed)", relativeJob.LastError, StringComparison.Ordinal);
        Assert.Equal(1, moved.Requests);
        Assert.Equal(1, relative.Requests);
    }

    [Fact]
    public async Task A_redirects_location_with_control_characters_or_past_any_length_is_recorded_printable_and_cut_short()
    {
        // An escape sequence that would clear an operator's terminal, a DEL, then far more than anyone reads.
        var location = Encoding.ASCII.GetBytes("https://new.example/\u001B[2Jhook\u007F" + new string('a', 5000));
        await using var receiver = RawRedirectReceiver.Start(302, location);
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);

        var job = await DeadLetteredAsync(webhook);
        Assert.Contains(@" (moved to https://new.example/\u001B[2Jhook\u007Faaa", job.LastError, StringComparison.Ordinal);
        Assert.DoesNotContain(job.LastError!, char.IsControl);
        Assert.Contains("answered 302 ", job.LastError, StringComparison.Ordinal);
        // At most 500 characters of it, as of an error body.
        Assert.DoesNotContain(new string('a', 500), job.LastError, StringComparison.Ordinal);
        Assert.Contains("aaa…, not followed)", job.LastError, StringComparison.Ordinal);
        Assert.Equal(1, receiver.Requests);
    }

    private Task<RunningApp> StartWorkerAsync() => fixture.StartWorkerAsync(WorkerSettings.With().Override(
        ("Consumers:DeliverWebhook:RetryLimit", "3"),
        ("Consumers:DeliverWebhook:RedeliveryLimit", "3")));

    private Task<Job> DeadLetteredAsync(DeliverWebhook webhook) =>
        fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.DeadLettered, attempts: 1);

    private static DeliverWebhook Webhook(Uri url) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = url,
        EventType = "invoice.created",
        Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
    };
}
