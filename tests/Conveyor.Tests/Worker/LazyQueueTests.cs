using System.Net;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The worker's classic job queues keep their messages on disk (lazy mode, the default of
/// <c>RabbitMq:LazyQueues</c>), and so do the <c>_error</c> and <c>_skipped</c> queues MassTransit
/// declares from them.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class LazyQueueTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";
    private static readonly string[] JobQueues = ["charge-payment", "deliver-webhook", "generate-report"];

    /// <summary>Every worker here uses the run's database, whatever its vhost: none may find an earlier test's rows.</summary>
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task By_default_the_job_queues_and_their_error_and_skipped_queues_are_lazy()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        // An invalid charge goes to _error, a type nobody consumes to _skipped: MassTransit declares both then.
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new { paymentId = Guid.NewGuid(), accountId = "acct-lazy", amountMinor = -5, currency = "EUR" });
        await producer.PublishEnvelopeAsync(Exchange, "urn:message:Acme.Shipping:ShipOrder", new { orderId = 7 });

        await AssertModesAsync(fixture.VirtualHost, [.. JobQueues, "charge-payment_error", "charge-payment_skipped"], argument: "lazy", effective: "lazy");

        await fixture.Rabbit.PurgeAsync(fixture.VirtualHost, "charge-payment_error");
        await fixture.Rabbit.PurgeAsync(fixture.VirtualHost, "charge-payment_skipped");
    }

    [Fact]
    public async Task A_worker_that_starts_while_the_broker_is_away_still_keeps_an_existing_default_mode_queue_as_it_is()
    {
        await using var scratch = await fixture.ScratchVhostAsync("unreachable");
        var vhost = scratch.Name;
        await DeclareInDefaultModeAsync(vhost, "charge-payment");

        // The broker is away when the worker starts, and back once the worker has tried it twice. Probing
        // nothing and declaring the queue lazy would be refused by the broker for as long as the process lived.
        var rabbit = fixture.RabbitOptions();
        await using var proxy = await OutageProxy.ToAsync(rabbit.Host, rabbit.Port);
        proxy.Cut();
        // On a thread of its own: start-up blocks while it waits for the broker.
        var starting = Task.Run(() => fixture.StartWorkerAsync(scratch.WorkerSettingsWith(
            ("RabbitMq:Port", proxy.Port.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            ("RabbitMq:ConnectTimeoutSeconds", "2"))));
        await Eventually.AssertAsync(() => Assert.True(proxy.Refused >= 2, $"the worker tried {proxy.Refused} time(s) while the broker was away"));
        proxy.Restore();
        await using var worker = await starting;

        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost, "charge-payment"))?.Consumers);
            Assert.Null((await fixture.Rabbit.QueueModeAsync(vhost, "charge-payment")).Argument);
        }, TimeSpan.FromSeconds(30));
        Assert.True(proxy.Refused > 0, "the worker never tried while the broker was away");
    }

    [Fact]
    public async Task Queues_that_exist_in_the_default_mode_are_kept_as_they_are_and_still_consumed_and_dead_lettered_into()
    {
        // As an earlier version (or another tool) declared them: without x-queue-mode. RabbitMQ refuses
        // to redeclare them lazy, which would keep the worker from consuming at all (a job queue) or
        // from dead-lettering (an _error queue whose job queue is new).
        await using var scratch = await fixture.ScratchVhostAsync("existing");
        var vhost = scratch.Name;
        await DeclareInDefaultModeAsync(vhost, "charge-payment", "deliver-webhook_error");

        await using var worker = await fixture.StartWorkerAsync(scratch.WorkerSettingsWith());

        await Eventually.AssertAsync(async () =>
        {
            using var ready = await worker.Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
            Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost, "charge-payment"))?.Consumers);
            Assert.Null((await fixture.Rabbit.QueueModeAsync(vhost, "charge-payment")).Argument);
            // The queues that did not exist are declared lazy all the same.
            Assert.Equal("lazy", (await fixture.Rabbit.QueueModeAsync(vhost, "deliver-webhook")).Argument);
            Assert.Equal("lazy", (await fixture.Rabbit.QueueModeAsync(vhost, "generate-report")).Argument);
        }, TimeSpan.FromSeconds(30));

        // Unreadable commands: each goes to its _error queue, the existing one as it is.
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture, vhost);
        var unreadable = RawAmqpProducer.Utf8("{\"messageId\":\"1f0c\",\"message\":{");
        await producer.PublishRawAsync("deliver-webhook", unreadable, RawAmqpProducer.EnvelopeContentType);
        await producer.PublishRawAsync("charge-payment", unreadable, RawAmqpProducer.EnvelopeContentType);
        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost, "deliver-webhook_error"))?.Messages);
            Assert.Equal(1, (await fixture.Rabbit.QueueAsync(vhost, "charge-payment_error"))?.Messages);
        }, TimeSpan.FromSeconds(30));
        Assert.Null((await fixture.Rabbit.QueueModeAsync(vhost, "deliver-webhook_error")).Argument);
        // Declared by MassTransit from its job queue, which kept the default mode.
        Assert.Null((await fixture.Rabbit.QueueModeAsync(vhost, "charge-payment_error")).Argument);
    }

    [Fact]
    public async Task With_lazy_queues_off_the_worker_declares_its_job_queues_in_the_default_mode()
    {
        // A vhost of its own: RabbitMQ cannot redeclare the run's lazy queues in another mode.
        await using var vhost = await fixture.ScratchVhostAsync("default-mode");
        await using var worker = await fixture.StartWorkerAsync(vhost.WorkerSettingsWith(("RabbitMq:LazyQueues", "false")));

        await AssertModesAsync(vhost.Name, JobQueues, argument: null, effective: "default");
    }

    /// <summary>
    /// Each queue's <c>x-queue-mode</c> argument is <paramref name="argument"/> and the broker reports
    /// running it in mode <paramref name="effective"/> (what it runs, not only what was asked).
    /// </summary>
    private async Task AssertModesAsync(string vhost, IEnumerable<string> queues, string? argument, string effective) =>
        await Eventually.AssertAsync(async () =>
        {
            foreach (var queue in queues)
            {
                var (declared, reported) = await fixture.Rabbit.QueueModeAsync(vhost, queue);
                Assert.True(declared == argument, $"{queue}: x-queue-mode is '{declared}', expected '{argument}'");
                Assert.True(reported == effective, $"{queue}: the broker reports mode '{reported}', expected '{effective}'");
            }
        }, TimeSpan.FromSeconds(30));

    /// <summary>Declares <paramref name="queues"/> as an earlier version (or another tool) did: without x-queue-mode.</summary>
    private async Task DeclareInDefaultModeAsync(string vhost, params string[] queues)
    {
        await using var connection = await fixture.AmqpFactory(vhost).CreateConnectionAsync("conveyor-tests-existing-queue");
        await using var channel = await connection.CreateChannelAsync();
        foreach (var queue in queues)
        {
            await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
        }
    }
}
