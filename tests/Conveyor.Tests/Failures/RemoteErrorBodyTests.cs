using System.Net;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Failures;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>A remote side's error body is a clue for a person, never something an attempt waits on.</summary>
[Collection(ConveyorCollection.Name)]
public sealed class RemoteErrorBodyTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_webhook_receiver_answering_500_with_an_endless_body_fails_the_attempt_as_transient_once_a_bounded_start_is_read()
    {
        await using var endless = await FakeWebhookReceiver.StartAsync();
        endless.TrickleEndlessBodyWith = HttpStatusCode.InternalServerError;
        // As fast as the worker reads: only the bound on what is read can end the read.
        endless.EndlessBodyPause = TimeSpan.Zero;
        await using var healthy = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            // Far beyond the test: no timer ends the read.
            ("Webhooks:TimeoutSeconds", "60"),
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            // Far beyond the test: the job stays retry-scheduled once its attempt has ended.
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var stuck = Webhook(endless.Url());
        var other = Webhook(healthy.Url());

        await publisher.PublishAsync(stuck);
        await publisher.PublishAsync(other);

        // The status code decides (500: transient, so a later attempt), though the body never ended; the
        // error keeps the body's start, cut at the snippet's length, and no note of a read cut short by time.
        var start = string.Concat(Enumerable.Repeat(FakeWebhookReceiver.EndlessBodyChunk, HttpFailures.MaxSnippetChars))[..HttpFailures.MaxSnippetChars];
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == stuck.WebhookId.ToString());
            Assert.Equal(JobStatus.RetryScheduled, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.NotNull(job.NextAttemptAt);
            Assert.EndsWith($"answered 500 InternalServerError: {start}", job.LastError, StringComparison.Ordinal);
            Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
        // The worker stopped reading and closed the connection rather than leave it open.
        await Eventually.AssertAsync(() => Assert.Equal(1, endless.EndlessBodiesAbandoned), TimeSpan.FromSeconds(30));
        Assert.Single(endless.Deliveries);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == other.WebhookId.ToString());
            Assert.Equal(JobStatus.Succeeded, job.Status);
        }, TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task A_webhook_receiver_answering_500_with_a_body_that_stalls_fails_the_attempt_as_transient_once_the_delivery_time_is_spent()
    {
        await using var stalling = await FakeWebhookReceiver.StartAsync();
        stalling.TrickleEndlessBodyWith = HttpStatusCode.InternalServerError;
        // One chunk, then nothing, without an end: far from the bound on what is read, so only the
        // delivery's time (Webhooks:TimeoutSeconds, the 5 s every webhook test has) can end the read.
        stalling.EndlessBodyPause = Timeout.InfiniteTimeSpan;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(stalling.Url());

        await publisher.PublishAsync(webhook);

        // What was read is kept, with a note that the rest never came; the status code still decides.
        var job = await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.RetryScheduled);
        Assert.Equal(1, job.Attempts);
        Assert.Contains($"answered 500 InternalServerError: {FakeWebhookReceiver.EndlessBodyChunk}… (body not read within ", job.LastError, StringComparison.Ordinal);
        await Eventually.AssertAsync(() => Assert.Equal(1, stalling.EndlessBodiesAbandoned), TimeSpan.FromSeconds(30));
        Assert.Single(stalling.Deliveries);
    }

    [Fact]
    public async Task An_error_body_cut_inside_a_surrogate_pair_or_holding_a_nul_is_recorded_as_the_jobs_last_error()
    {
        // 499 characters, then an emoji whose two UTF-16 halves straddle the 500-character snippet, in
        // one answer; a NUL in the next. PostgreSQL takes neither a NUL nor half a pair: before, each
        // status write of the failed attempt threw, and the job stayed running for good.
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.ServiceUnavailable;
        receiver.AnswerBody = new string('x', 499) + "\U0001F600 and more";
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "1"),
            // Far beyond the test: the second attempt comes when the test makes it due, once the
            // receiver's answer has changed, not when a short delay happens to run out.
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);
        var scheduled = await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.RetryScheduled);
        Assert.Single(receiver.Deliveries);
        receiver.AnswerBody = "busy\0 try later";
        await fixture.MakeScheduledMessagesDueAsync();

        Assert.Contains("answered 503", scheduled.LastError, StringComparison.Ordinal);
        Assert.Contains(new string('x', 499), scheduled.LastError, StringComparison.Ordinal);
        Assert.DoesNotContain(scheduled.LastError!, char.IsSurrogate);
        var dead = await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.DeadLettered);
        Assert.Contains("busy try later", dead.LastError, StringComparison.Ordinal);
        Assert.Equal(2, receiver.Deliveries.Count);
    }

    [Fact]
    public async Task A_webhook_receiver_whose_error_answer_is_beyond_the_clients_limits_is_a_permanent_failure()
    {
        // A 2xx so answered is a delivery (WebhookAnswerHeadersTests); any other status is judged as before.
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWithOversizedHeader = true;
        receiver.AnswerWith = HttpStatusCode.BadRequest;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);

        // It would answer the same way every time: one attempt, then _error, no redelivery stored.
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == webhook.WebhookId.ToString());
            Assert.Equal(JobStatus.DeadLettered, job.Status);
            Assert.Equal(1, job.Attempts);
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
        Assert.Single(receiver.Deliveries);
    }

    [Theory]
    [InlineData("text/plain; charset=utf-7")]
    [InlineData("text/plain; charset=\"UTF-7\"")]
    public async Task A_503_whose_body_names_a_charset_dotnet_refuses_is_transient_with_its_body_in_the_last_error(string contentType)
    {
        // UTF-7 is a charset .NET knows by name and refuses to decode (NotSupportedException, not the
        // ArgumentException of an unknown name): before, that exception replaced the 503's transient
        // failure, and being no known failure it was permanent: the webhook went to _error at once.
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.ServiceUnavailable;
        receiver.AnswerBody = "busy, try later";
        receiver.AnswerBodyContentType = contentType;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "1"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = Webhook(receiver.Url());

        await publisher.PublishAsync(webhook);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().WithoutRequestBody().SingleOrDefaultAsync(j => j.BusinessKey == webhook.WebhookId.ToString());
            Assert.NotNull(job);
            Assert.True(job.Status is JobStatus.RetryScheduled or JobStatus.DeadLettered, job.Status);
            Assert.Equal(JobStatus.RetryScheduled, job.Status);
            Assert.Contains("answered 503", job.LastError, StringComparison.Ordinal);
            Assert.Contains("busy, try later", job.LastError, StringComparison.Ordinal);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(30));
    }

    private static DeliverWebhook Webhook(Uri url) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = url,
        EventType = "invoice.created",
        Payload = JsonDocument.Parse("""{"invoice":7}""").RootElement,
    };
}
