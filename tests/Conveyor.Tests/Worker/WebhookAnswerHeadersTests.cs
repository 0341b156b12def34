using System.Text;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Webhooks;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A receiver whose status line says 2xx took the delivery, whatever follows it. HttpClient fails the
/// request on headers over its limit (64 KiB) or on a malformed header line, without telling the status:
/// such a delivery was dead-lettered (a permanent failure) though its receiver had it, and a move back
/// from _error delivered it again. Each is logged as a warning naming the receiver, for its operator.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookAnswerHeadersTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_200_with_headers_over_the_clients_limit_is_delivered()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWithOversizedHeader = true;
        var logs = new CapturedLogs();
        await using var worker = await StartWorkerAsync(logs);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);

        await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        Assert.Equal(200, await DeliveredStatusAsync(webhook));
        Assert.Single(receiver.Deliveries);
        // Its operator can see the receiver that answers badly: its host, its status and what was wrong.
        var warning = Assert.Single(logs.Of(LogLevel.Warning, typeof(WebhookSender).FullName!));
        Assert.Contains("The webhook receiver at 127.0.0.1 answered 200 followed by headers the HTTP client refuses (ConfigurationLimitExceeded: ", warning.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_2xx_whose_header_lines_are_malformed_or_follow_an_interim_answer_is_delivered()
    {
        await using var malformed = RawTcpReceiver.AnsweringWith("HTTP/1.1 202 Accepted\r\nnot a header\r\nContent-Length: 0\r\n\r\n"u8.ToArray());
        // An interim 103 Early Hints first: the final status line decides.
        await using var hinted = RawTcpReceiver.AnsweringWith(Encoding.ASCII.GetBytes(
            "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
            + $"HTTP/1.1 201 Created\r\nX-Oversized: {new string('x', 100 * 1024)}\r\nContent-Length: 0\r\n\r\n"));
        var logs = new CapturedLogs();
        await using var worker = await StartWorkerAsync(logs);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var toMalformed = Webhook(malformed.Url());
        var toHinted = Webhook(hinted.Url());

        await publisher.PublishAsync(toMalformed);
        await publisher.PublishAsync(toHinted);

        await fixture.WaitForJobAsync(toMalformed.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        await fixture.WaitForJobAsync(toHinted.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        Assert.Equal(202, await DeliveredStatusAsync(toMalformed));
        Assert.Equal(201, await DeliveredStatusAsync(toHinted));
        var warnings = logs.Of(LogLevel.Warning, typeof(WebhookSender).FullName!).Select(w => w.Message).ToList();
        Assert.Equal(2, warnings.Count);
        Assert.Contains(warnings, w => w.Contains("at 127.0.0.1 answered 202 followed by headers the HTTP client refuses (InvalidResponse: ", StringComparison.Ordinal));
        Assert.Contains(warnings, w => w.Contains("at 127.0.0.1 answered 201 followed by headers the HTTP client refuses (ConfigurationLimitExceeded: ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task An_error_status_with_headers_over_the_limit_after_an_interim_answer_is_not_delivered()
    {
        // The status that decides is the final one: a 103, then a 400 with headers over the limit, is no delivery.
        await using var receiver = RawTcpReceiver.AnsweringWith(Encoding.ASCII.GetBytes(
            "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
            + $"HTTP/1.1 400 Bad Request\r\nX-Oversized: {new string('x', 100 * 1024)}\r\nContent-Length: 0\r\n\r\n"));
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);

        await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.DeadLettered, attempts: 1);
        Assert.Null(await DeliveredStatusAsync(webhook));
    }

    /// <summary>
    /// A status of four digits that begins "20", or a 200 after a version that is not HTTP/1, is no 2xx: the status
    /// line is malformed, which HttpClient refuses, and an answer that is not valid HTTP is dead-lettered naming it,
    /// where the start of the answer was read as a 200 and the delivery recorded as delivered.
    /// </summary>
    [Theory]
    [InlineData("HTTP/1.1 2000 OK")]
    [InlineData("HTTP/2.0 200 OK")]
    public async Task A_malformed_status_line_that_begins_like_a_200_is_not_valid_http_and_no_delivery(string statusLine)
    {
        await using var receiver = RawTcpReceiver.AnsweringWith(Encoding.ASCII.GetBytes($"{statusLine}\r\nContent-Length: 0\r\n\r\n"));
        await using var worker = await StartWorkerAsync();
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);

        var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.DeadLettered, attempts: 1);
        Assert.Contains("The webhook receiver at 127.0.0.1 answered with something that is not valid HTTP", job.LastError, StringComparison.Ordinal);
        Assert.Null(await DeliveredStatusAsync(webhook));
    }

    private Task<RunningApp> StartWorkerAsync(CapturedLogs? logs = null) => fixture.StartWorkerAsync(
        WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")),
        builder =>
        {
            if (logs is not null)
            {
                builder.Logging.AddProvider(logs);
            }
        });

    private async Task<int?> DeliveredStatusAsync(DeliverWebhook webhook)
    {
        await using var db = fixture.CreateDbContext();
        return (await db.WebhookDeliveries.AsNoTracking().SingleOrDefaultAsync(d => d.WebhookId == webhook.WebhookId))?.StatusCode;
    }

    private static DeliverWebhook Webhook(Uri url) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = url,
        EventType = "invoice.paid",
        Payload = JsonDocument.Parse("""{"invoice":9}""").RootElement,
    };
}
