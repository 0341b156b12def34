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
/// asked, another protocol, https to a port that does not speak TLS) is dead-lettered after one attempt with
/// the reason in the job's last error; before, each was retried and redelivered for an hour as if it might
/// pass. Network trouble that may pass stays transient, and so does a certificate refused (expired, for
/// another host, untrusted), which its receiver may renew or correct, as Stripe and Svix keep retrying it.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class WebhookUnusableAnswerTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(HttpStatusCode.NotImplemented, "answered 501 NotImplemented")]
    [InlineData(HttpStatusCode.HttpVersionNotSupported, "answered 505 HttpVersionNotSupported")]
    [InlineData(HttpStatusCode.NotExtended, "answered 510 NotExtended")]
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
    public async Task A_tls_handshake_with_a_port_that_does_not_speak_tls_is_dead_lettered_after_one_attempt()
    {
        // https to a port that speaks plain HTTP: the server answers the ClientHello with an HTTP 400.
        await using var plain = await FakeWebhookReceiver.StartAsync();
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var toPlain = Webhook(new Uri($"https://127.0.0.1:{plain.BaseAddress.Port}/hooks"));

        await publisher.PublishAsync(toPlain);

        var plainJob = await DeadLetteredAsync(toPlain);
        Assert.Contains("The TLS handshake with the webhook receiver at 127.0.0.1 failed before any certificate was presented", plainJob.LastError, StringComparison.Ordinal);
        Assert.Contains("does not speak TLS", plainJob.LastError, StringComparison.Ordinal);
        Assert.Empty(plain.Deliveries);
    }

    [Theory]
    [InlineData("expired", "certificate expired on ")]
    [InlineData("not yet valid", "certificate not yet valid before ")]
    [InlineData("for another host", "name mismatch")]
    [InlineData("self-signed", "untrusted root")]
    public async Task A_receiver_whose_certificate_is_refused_is_retried_with_the_problem_named_and_never_sent_the_delivery(string certificate, string problem)
    {
        var now = DateTimeOffset.UtcNow;
        await using var receiver = RawTcpReceiver.WithCertificate(certificate switch
        {
            "expired" => RawTcpReceiver.SelfSignedCertificate(null, now.AddDays(-30), now.AddDays(-1)),
            "not yet valid" => RawTcpReceiver.SelfSignedCertificate(null, now.AddDays(1), now.AddDays(30)),
            "for another host" => RawTcpReceiver.SelfSignedCertificate("receiver.example", now.AddDays(-1), now.AddDays(30)),
            _ => RawTcpReceiver.SelfSignedCertificate(null, now.AddDays(-1), now.AddDays(30)),
        });
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url("https"));

        await publisher.PublishAsync(webhook);

        // The receiver may renew or correct its certificate: one attempt, then a redelivery waits.
        var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.RetryScheduled, attempts: 1);
        Assert.NotNull(job.NextAttemptAt);
        Assert.Contains("The webhook receiver at 127.0.0.1 presented a TLS certificate that is refused (", job.LastError, StringComparison.Ordinal);
        Assert.Contains(problem, job.LastError, StringComparison.Ordinal);
        // Every one of them is self-signed, so untrusted too; and refused: no request was sent over it.
        Assert.Contains("untrusted root", job.LastError, StringComparison.Ordinal);
        Assert.Equal(1, receiver.Connections);
        Assert.Equal(0, receiver.Requests);
    }

    [Fact]
    public async Task A_receiver_whose_certificate_stays_refused_is_dead_lettered_once_its_attempts_are_spent()
    {
        var now = DateTimeOffset.UtcNow;
        await using var receiver = RawTcpReceiver.WithCertificate(RawTcpReceiver.SelfSignedCertificate(null, now.AddDays(-30), now.AddDays(-1)));
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "1"),
            ("Consumers:DeliverWebhook:RetryMinIntervalMilliseconds", "50"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "0")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url("https"));

        await publisher.PublishAsync(webhook);

        var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.DeadLettered, attempts: 2);
        Assert.Contains("certificate expired on ", job.LastError, StringComparison.Ordinal);
        Assert.Equal(2, receiver.Connections);
        Assert.Equal(0, receiver.Requests);
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
