using System.Text;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using RabbitMQ.Client;

namespace Conveyor.Tests.Failures;

/// <summary>Hostile input from a raw AMQP producer never crashes or stalls the worker, and is never lost.</summary>
[Collection(ConveyorCollection.Name)]
public sealed class PoisonMessageTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string ChargeUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Each_poison_message_lands_in_error_or_skipped_with_a_reason_while_good_ones_are_processed()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var goodBefore = Guid.NewGuid();
        var goodAfter = Guid.NewGuid();

        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, Good(goodBefore));
        // Malformed JSON under the envelope content type.
        await producer.PublishRawAsync(Exchange, RawAmqpProducer.Utf8("""{"messageId":"1f0c","message":{"paymentId":"""), RawAmqpProducer.EnvelopeContentType);
        // A content type nobody can read.
        await producer.PublishRawAsync(Exchange, RawAmqpProducer.Utf8("charge acct-1 10 EUR"), "text/plain");
        // A well-formed envelope of a message type no consumer here knows.
        await producer.PublishEnvelopeAsync(Exchange, "urn:message:Acme.Shipping:ShipOrder", new { orderId = 12 });
        // Required fields missing.
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new { paymentId = Guid.NewGuid(), accountId = "acct-poison" });
        // Present but invalid.
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new { paymentId = Guid.NewGuid(), accountId = "acct-poison", amountMinor = -5, currency = "EUR" });
        // What the Api would refuse (an account id with a line break, a code that is no currency in
        // circulation), published straight to the broker.
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new { paymentId = Guid.NewGuid(), accountId = "acct-poison\r\nforged: line", amountMinor = 100, currency = "XXX" });
        // Far over the size limit.
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, new
        {
            paymentId = Guid.NewGuid(),
            accountId = "acct-poison",
            amountMinor = 100,
            currency = "EUR",
            padding = new string('x', 2 * 1024 * 1024),
        });
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, Good(goodAfter));

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(2, await db.Ledger.CountAsync(l => l.PaymentId == goodBefore || l.PaymentId == goodAfter));
        });

        var error = new List<RawAmqpProducer.TakenMessage>();
        var skipped = new List<RawAmqpProducer.TakenMessage>();
        await Eventually.AssertAsync(async () =>
        {
            error.AddRange(await producer.TakeAllAsync("charge-payment_error"));
            skipped.AddRange(await producer.TakeAllAsync("charge-payment_skipped"));
            Assert.Equal(7, error.Count + skipped.Count);
        });

        // The unknown type is skipped; everything unreadable or invalid is an error with its reason.
        var unknown = Assert.Single(skipped);
        Assert.Contains("ShipOrder", Encoding.UTF8.GetString(unknown.Body), StringComparison.Ordinal);
        Assert.StartsWith("no consumer on charge-payment takes this message's type", unknown.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        Assert.Equal(6, error.Count);
        Assert.All(error, message =>
        {
            Assert.False(string.IsNullOrWhiteSpace(message.Header("MT-Fault-Message")), "an _error message without MT-Fault-Message");
            Assert.False(string.IsNullOrWhiteSpace(message.Header("Conveyor-Dead-Letter-Reason")), "an _error message without a Conveyor reason");
        });
        // Only what could not be read as a job says so: the rest was read, and failed for its own reason.
        Assert.StartsWith("unreadable message: ", error.Single(m => m.ContentType == "text/plain").Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        Assert.StartsWith("unreadable message: ", error.Single(m => Encoding.UTF8.GetString(m.Body).EndsWith("\"paymentId\":", StringComparison.Ordinal)).Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        // So is a command without its required fields: MassTransit's reader refuses it, and no job is read from it.
        Assert.StartsWith("unreadable message: ", error.Single(m => m.Header("MT-Fault-Message")!.Contains("missing required properties", StringComparison.Ordinal)).Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        Assert.Equal(3, error.Count(m => m.Header("Conveyor-Dead-Letter-Reason")!.StartsWith("unreadable message: ", StringComparison.Ordinal)));
        Assert.Contains(error, m => m.Header("MT-Fault-Message")!.StartsWith("Invalid ChargePayment: amountMinor: Must be between 1 and", StringComparison.Ordinal));
        Assert.Contains(error, m => m.Header("MT-Fault-Message") == "Invalid ChargePayment: accountId: May contain only letters, digits and the characters _ - : .; currency: Must be an active ISO 4217 currency code in upper case, such as EUR.");
        Assert.Contains(error, m => m.Header("MT-Fault-Message")!.Contains("limit is", StringComparison.Ordinal));

        // Still healthy, still consuming, nothing left behind.
        using var ready = await worker.Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
        Assert.True(ready.IsSuccessStatusCode);
        await fixture.AssertDrainedAsync(worker, "charge-payment");
        await using var check = fixture.CreateDbContext();
        Assert.Equal(2, await check.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
        Assert.Equal(2, await check.Ledger.CountAsync());
    }

    /// <summary>
    /// A producer that sets no AMQP headers sends no header table at all (the management UI's publish, many
    /// non-.NET clients). The received properties then have no table to write the skip's reason into, and the
    /// copy went to <c>_skipped</c> with only MassTransit's bare <c>MT-Reason: dead-letter</c>.
    /// </summary>
    [Fact]
    public async Task A_message_without_any_header_table_lands_in_skipped_or_error_with_its_reason()
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        await fixture.DeclareAsync("charge-payment_skipped");
        await fixture.DeclareAsync("charge-payment_error");
        await AssertPublishedWithoutHeaderTableAsync(producer);

        // A type no consumer here takes, an envelope that names no type, and no JSON at all: straight to the queue.
        var unknownType = $$$"""{"messageId":"{{{Guid.NewGuid()}}}","messageType":["urn:message:Evil:Type"],"message":{}}""";
        var noType = $$$"""{"messageId":"{{{Guid.NewGuid()}}}","message":{"paymentId":"{{{Guid.NewGuid()}}}"}}""";
        const string notJson = "{not json";
        foreach (var body in new[] { unknownType, noType, notJson })
        {
            await producer.PublishWithoutHeaderTableAsync("", "charge-payment", RawAmqpProducer.Utf8(body), RawAmqpProducer.EnvelopeContentType, Guid.NewGuid().ToString());
        }

        var skipped = new List<RawAmqpProducer.TakenMessage>();
        var error = new List<RawAmqpProducer.TakenMessage>();
        await Eventually.AssertAsync(async () =>
        {
            skipped.AddRange(await producer.TakeAllAsync("charge-payment_skipped"));
            error.AddRange(await producer.TakeAllAsync("charge-payment_error"));
            Assert.Equal(3, skipped.Count + error.Count);
        }, () => PipelineState.DescribeAsync(fixture));

        Assert.Equal(new[] { noType, unknownType }.Order(StringComparer.Ordinal), skipped.Select(m => Encoding.UTF8.GetString(m.Body)).Order(StringComparer.Ordinal));
        Assert.All(skipped, message =>
        {
            Assert.StartsWith("no consumer on charge-payment takes this message's type", message.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
            // MassTransit's own headers stay beside it.
            Assert.Equal("dead-letter", message.Header("MT-Reason"));
            Assert.False(string.IsNullOrEmpty(message.Header("MT-Host-MachineName")), "a _skipped copy without MassTransit's host headers");
        });
        var unreadable = Assert.Single(error);
        Assert.Equal(notJson, Encoding.UTF8.GetString(unreadable.Body));
        Assert.StartsWith("unreadable message: ", unreadable.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        Assert.False(string.IsNullOrWhiteSpace(unreadable.Header("MT-Fault-Message")), "an _error copy without MT-Fault-Message");
        await fixture.AssertDrainedAsync(worker, "charge-payment");
    }

    /// <summary>
    /// A message that cannot be read as its job has no job the worker could name in <c>_error</c>: a job id,
    /// attempts or kind it came with are its sender's claims, and the id may be another job's. Left on the
    /// copy, the Api's listing showed that job's status beside it, and a move by that job's id took it along.
    /// </summary>
    [Fact]
    public async Task An_unreadable_message_does_not_name_in_error_the_job_its_headers_claim()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await fixture.DeclareAsync("charge-payment_error");
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var other = Guid.NewGuid();
        await producer.PublishEnvelopeAsync(Exchange, ChargeUrn, Good(other));
        var otherJob = await fixture.WaitForJobAsync(other, JobStatus.Succeeded);

        await producer.PublishRawAsync(Exchange, RawAmqpProducer.Utf8("""{"messageId":"1f0c","message":{"paymentId":"""), RawAmqpProducer.EnvelopeContentType,
            headers: new Dictionary<string, string>
            {
                ["Conveyor-Job-Id"] = otherJob.Id.ToString(),
                ["conveyor-attempts"] = "7",
                ["Conveyor-Job-Kind"] = "deliver-webhook",
            });

        var error = await producer.TakeOnlyAsync("charge-payment_error", () => PipelineState.DescribeAsync(fixture));
        Assert.StartsWith("unreadable message: ", error.Header("Conveyor-Dead-Letter-Reason"), StringComparison.Ordinal);
        var claims = error.Headers.Keys.Where(name =>
            name.Equals("Conveyor-Job-Id", StringComparison.OrdinalIgnoreCase) || name.Equals("Conveyor-Attempts", StringComparison.OrdinalIgnoreCase)
            || name.Equals("Conveyor-Job-Kind", StringComparison.OrdinalIgnoreCase));
        Assert.Empty(claims);
    }

    /// <summary>
    /// A command whose fields have the wrong JSON types (a string for a number, a number for a string, a fraction
    /// or an overflow for an amount, an id that is no UUID) cannot be read as its job: no job row, no job named,
    /// and a reason that says so and where it broke, as for a body that is no JSON. It read "permanent failure;
    /// not retried: JsonException", as if the command had been read and refused.
    /// </summary>
    [Theory]
    [InlineData("\"amountMinor\":\"five\"", "$.amountMinor")]
    [InlineData("\"amountMinor\":1.5", "$.amountMinor")]
    [InlineData("\"amountMinor\":99999999999999999999999", "$.amountMinor")]
    [InlineData("\"accountId\":7", "$.accountId")]
    public async Task A_command_whose_fields_have_the_wrong_types_goes_to_error_as_unreadable(string wrongField, string path)
    {
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        await fixture.DeclareAsync("charge-payment_error");
        var fields = new Dictionary<string, string>
        {
            ["paymentId"] = $"\"{Guid.NewGuid()}\"",
            ["accountId"] = "\"acct-poison\"",
            ["amountMinor"] = "250",
            ["currency"] = "\"EUR\"",
        };
        var (name, value) = (wrongField.Split(':', 2)[0].Trim('"'), wrongField.Split(':', 2)[1]);
        fields[name] = value;
        var command = "{" + string.Join(",", fields.Select(field => $"\"{field.Key}\":{field.Value}")) + "}";

        await producer.PublishRawAsync(Exchange, RawAmqpProducer.Utf8(
            $$"""{"messageId":"{{Guid.NewGuid()}}","messageType":["{{ChargeUrn}}"],"message":{{command}}}"""), RawAmqpProducer.EnvelopeContentType);

        var error = await producer.TakeOnlyAsync("charge-payment_error", () => PipelineState.DescribeAsync(fixture));
        var reason = error.Header("Conveyor-Dead-Letter-Reason");
        Assert.StartsWith("unreadable message: ", reason, StringComparison.Ordinal);
        Assert.Contains(path, reason, StringComparison.Ordinal);
        Assert.Null(error.Header("Conveyor-Job-Id"));
        Assert.Null(error.Header("Conveyor-Job-Kind"));
        await fixture.AssertDrainedAsync(worker, "charge-payment");
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.Jobs.CountAsync());
    }

    /// <summary>What the test is about: the publish carries no header table, as the worker receives it.</summary>
    private async Task AssertPublishedWithoutHeaderTableAsync(RawAmqpProducer producer)
    {
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync("conveyor-tests-header-table-probe");
        await using var channel = await connection.CreateChannelAsync();
        var probe = await channel.QueueDeclareAsync();
        await producer.PublishWithoutHeaderTableAsync("", probe.QueueName, RawAmqpProducer.Utf8("{}"), RawAmqpProducer.EnvelopeContentType);
        var received = await channel.BasicGetAsync(probe.QueueName, autoAck: true);
        Assert.NotNull(received);
        Assert.False(received.BasicProperties.IsHeadersPresent(), "the publish carried a header table");
    }

    private static object Good(Guid paymentId) => new { paymentId, accountId = "acct-good", amountMinor = 250, currency = "EUR" };
}
