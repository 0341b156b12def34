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

    [Fact]
    public async Task A_receiver_answering_in_another_protocol_is_dead_lettered_after_one_attempt()
    {
        // An SSH server's banner, where the URL's port is not the receiver's.
        await using var ssh = RawTcpReceiver.AnsweringWith("SSH-2.0-OpenSSH_9.6\r\n"u8.ToArray());
        // A status line, then a header line no HTTP server writes.
        await using var broken = RawTcpReceiver.AnsweringWith("HTTP/1.1 500 Oops\r\nnot a header\r\n\r\n"u8.ToArray());
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var toSsh = Webhook(ssh.Url());
        var toBroken = Webhook(broken.Url());

        await publisher.PublishAsync(toSsh);
        await publisher.PublishAsync(toBroken);

        var sshJob = await DeadLetteredAsync(toSsh);
        Assert.Contains("The webhook receiver at 127.0.0.1 answered with something that is not valid HTTP", sshJob.LastError, StringComparison.Ordinal);
        Assert.Contains("SSH-2.0-OpenSSH_9.6", sshJob.LastError, StringComparison.Ordinal);
        var brokenJob = await DeadLetteredAsync(toBroken);
        Assert.Contains("answered with something that is not valid HTTP", brokenJob.LastError, StringComparison.Ordinal);
        Assert.Equal(1, ssh.Connections);
        Assert.Equal(1, broken.Connections);
    }

    [Fact]
    public async Task A_receiver_answering_bytes_of_another_protocol_without_a_line_break_is_dead_lettered_after_one_attempt()
    {
        // A PostgreSQL server's error message to a startup packet it cannot read: binary, no line break,
        // then the connection closed. HttpClient says only that the answer ended, as it does for one cut off.
        await using var database = RawTcpReceiver.AnsweringWith([(byte)'E', 0, 0, 0, 0x10, .. "SFATAL"u8, 0x1B, 0]);
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(database.Url());

        await publisher.PublishAsync(webhook);

        var job = await DeadLetteredAsync(webhook);
        Assert.Contains(@"answered with something that is not valid HTTP (it began ""E\u0000\u0000\u0000\u0010SFATAL\u001B\u0000"")", job.LastError, StringComparison.Ordinal);
        Assert.Equal(1, database.Connections);
    }

    [Fact]
    public async Task A_tls_handshake_that_fails_for_the_receivers_port_or_certificate_is_dead_lettered_after_one_attempt()
    {
        // https to a port that speaks plain HTTP: the server answers the ClientHello with an HTTP 400.
        await using var plain = await FakeWebhookReceiver.StartAsync();
        await using var untrusted = RawTcpReceiver.WithUntrustedCertificate();
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var toPlain = Webhook(new Uri($"https://127.0.0.1:{plain.BaseAddress.Port}/hooks"));
        var toUntrusted = Webhook(untrusted.Url("https"));

        await publisher.PublishAsync(toPlain);
        await publisher.PublishAsync(toUntrusted);

        var plainJob = await DeadLetteredAsync(toPlain);
        Assert.Contains("The TLS handshake with the webhook receiver at 127.0.0.1 failed", plainJob.LastError, StringComparison.Ordinal);
        var untrustedJob = await DeadLetteredAsync(toUntrusted);
        Assert.Contains("The TLS handshake with the webhook receiver at 127.0.0.1 failed", untrustedJob.LastError, StringComparison.Ordinal);
        Assert.Contains("UntrustedRoot", untrustedJob.LastError, StringComparison.Ordinal);
        Assert.Empty(plain.Deliveries);
        Assert.Equal(1, untrusted.Connections);
    }

    [Fact]
    public async Task A_connection_refused_or_reset_or_an_answer_cut_off_stays_transient()
    {
        await using var reset = RawTcpReceiver.ResettingOnFirstBytes();
        // An answer cut off within its status line, and a connection closed without an answer.
        await using var cut = RawTcpReceiver.AnsweringWith("HTTP/1.1 20"u8.ToArray());
        await using var silent = RawTcpReceiver.AnsweringWith([]);
        var closed = RawTcpReceiver.ResettingOnFirstBytes();
        var refusedUrl = closed.Url();
        await closed.DisposeAsync();
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var refused = Webhook(refusedUrl);
        var resetRequest = Webhook(reset.Url());
        var resetHandshake = Webhook(reset.Url("https"));
        var cutAnswer = Webhook(cut.Url());
        var noAnswer = Webhook(silent.Url());
        DeliverWebhook[] webhooks = [refused, resetRequest, resetHandshake, cutAnswer, noAnswer];

        foreach (var webhook in webhooks)
        {
            await publisher.PublishAsync(webhook);
        }

        // Each may pass: one attempt, then a redelivery waits.
        foreach (var webhook in webhooks)
        {
            var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.RetryScheduled, attempts: 1);
            Assert.NotNull(job.NextAttemptAt);
        }
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
