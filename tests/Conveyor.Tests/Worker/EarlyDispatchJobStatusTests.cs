using System.Net;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A redelivery due at once (a delay of a millisecond) that can never be published reaches a dispatcher
/// as soon as it is stored. The job it was stored for must end dead-lettered, as when the dispatcher
/// finds it later. Before, the job's <c>retry-scheduled</c> status was written after the row committed:
/// a dispatcher that settled the row in between found the job still running, left it alone (it only
/// dead-letters a job that waits), and the late status write then left the job <c>retry-scheduled</c>
/// for good, waiting for a row that was already in <c>_error</c>. The test makes that window certain:
/// a trigger holds the status write for two seconds, and another makes every stored row unpublishable.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class EarlyDispatchJobStatusTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string WebhookExchange = "Conveyor.Contracts.Webhooks:DeliverWebhook";
    private const string WebhookUrn = "urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook";

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ExecuteAsync("""
            CREATE FUNCTION test_unpublishable_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                -- A header name longer than AMQP's 255-byte short string: no publish can carry it.
                NEW.headers := NEW.headers || jsonb_build_object(repeat('n', 300), 'x');
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_unpublishable_row BEFORE INSERT ON scheduled_messages
                FOR EACH ROW EXECUTE FUNCTION test_unpublishable_row();
            CREATE FUNCTION test_slow_retry_status() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_sleep(2);
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_slow_retry_status BEFORE UPDATE ON jobs
                FOR EACH ROW WHEN (NEW.status = 'retry-scheduled' AND OLD.status IS DISTINCT FROM 'retry-scheduled')
                EXECUTE FUNCTION test_slow_retry_status();
            """);
    }

    public Task DisposeAsync() => ExecuteAsync("""
        DROP TRIGGER IF EXISTS test_unpublishable_row ON scheduled_messages;
        DROP FUNCTION IF EXISTS test_unpublishable_row();
        DROP TRIGGER IF EXISTS test_slow_retry_status ON jobs;
        DROP FUNCTION IF EXISTS test_slow_retry_status();
        """);

    [Fact]
    public async Task A_redelivery_that_a_dispatcher_moves_to_error_before_the_status_would_be_written_dead_letters_its_job()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = HttpStatusCode.InternalServerError;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "0"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "1"),
            ("Consumers:DeliverWebhook:RedeliveryMaxDelayMilliseconds", "1"),
            ("Consumers:DeliverWebhook:RedeliveryJitter", "0"),
            ("Consumers:DeliverWebhook:KillSwitchTripPercent", "0")));
        await fixture.DeclareAsync("deliver-webhook_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var webhookId = Guid.NewGuid();

        await producer.PublishEnvelopeAsync(WebhookExchange, WebhookUrn,
            new { webhookId, url = receiver.Url(), eventType = "invoice.created", payload = new { invoice = 7 } });

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Kind == JobKinds.DeliverWebhook && j.BusinessKey == webhookId.ToString());
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            Assert.Equal((JobStatus.DeadLettered, 1), (job.Status, job.Attempts));
            Assert.StartsWith("UnpublishableRedelivery: ", job.LastError, StringComparison.Ordinal);
            Assert.Null(job.NextAttemptAt);
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromSeconds(45));
        Assert.Single(receiver.Deliveries);
        Assert.Equal(1u, await fixture.ReadyAsync("deliver-webhook_error"));
    }

    private async Task ExecuteAsync(string sql)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }
}
