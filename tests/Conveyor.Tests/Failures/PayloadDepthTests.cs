using System.Text.Json.Nodes;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.ErrorQueues;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A webhook's payload may nest at most <see cref="ContractRules.MaxPayloadDepth"/> levels, by the
/// worker's rules as by the Api's: a producer that publishes straight to RabbitMQ meets the same limit.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class PayloadDepthTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Webhooks:DeliverWebhook";
    private const string WebhookUrn = "urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_payload_one_level_deeper_than_the_limit_goes_to_error_unsent_and_one_at_the_limit_is_delivered()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var tooDeep = Guid.NewGuid();
        var atLimit = Guid.NewGuid();

        await producer.PublishEnvelopeAsync(Exchange, WebhookUrn, Webhook(tooDeep, receiver, ContractRules.MaxPayloadDepth + 1));
        await producer.PublishEnvelopeAsync(Exchange, WebhookUrn, Webhook(atLimit, receiver, ContractRules.MaxPayloadDepth));

        // Declared as the worker declares it at its first fault: taking from a queue that is not there
        // yet would close the producer's channel for every later try.
        await using (var broker = await TestBroker.ConnectAsync(fixture))
        {
            await broker.DeclareAsync("deliver-webhook_error");
        }

        RawAmqpProducer.TakenMessage? dead = null;
        await Eventually.AssertAsync(async () => dead = Assert.Single(await producer.TakeAllAsync("deliver-webhook_error")));
        Assert.Equal(
            $"Invalid DeliverWebhook: payload: Must nest objects and arrays at most {ContractRules.MaxPayloadDepth} levels deep.",
            dead!.Header("MT-Fault-Message"));
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == atLimit.ToString())).Status);
        });
        var delivered = Assert.Single(receiver.Deliveries);
        Assert.Equal(atLimit.ToString(), delivered.Headers["Conveyor-Webhook-Id"]);
    }

    private static object Webhook(Guid webhookId, FakeWebhookReceiver receiver, int depth)
    {
        JsonNode payload = new JsonObject { ["leaf"] = 1 };
        for (var level = 1; level < depth; level++)
        {
            payload = new JsonObject { ["next"] = payload };
        }

        return new { webhookId, url = receiver.Url(), eventType = "test.deep", payload };
    }
}
