using System.Collections.Concurrent;
using Conveyor.Storage;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using MassTransit;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A command without a business key is known to the inbox by its <c>MT-OriginalMessageId</c> header, else
/// its MessageId (<see cref="InboxKeys.FallbackKey"/>). Any sender can put any JSON in that header: one
/// that is no id is ignored, and the command runs once. No job endpoint of the worker takes this path
/// (each command has a business key), so a bus of the test's own runs a keyless command through the
/// real <see cref="InboxFilter{T}"/>, broker and database.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class FallbackKeyHeaderTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "fallback-key-probe";

    private static readonly string Exchange = $"{typeof(KeylessProbe).Namespace}:{nameof(KeylessProbe)}";

    private static readonly string ProbeUrn = $"urn:message:{Exchange}";

    private ServiceProvider _services = null!;
    private IBusControl _bus = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddSingleton(TimeProvider.System);
        services.AddSingleton(fixture.DbContextFactory());
        services.AddScoped(provider => provider.GetRequiredService<IDbContextFactory<ConveyorDbContext>>().CreateDbContext());
        services.AddSingleton<JobTracker>();
        services.AddMetrics();
        services.AddSingleton<JobMetrics>();
        services.AddSingleton<ProbeRuns>();
        var servers = fixture.Servers;
        services.AddMassTransit(bus =>
        {
            bus.AddConsumer<KeylessProbeConsumer>();
            bus.UsingRabbitMq((context, cfg) =>
            {
                cfg.Host(servers.RabbitHost, (ushort)servers.RabbitPort, fixture.VirtualHost, $"fallback-key-probe ({CallingTest.Name()})", h =>
                {
                    h.Username(servers.RabbitUser);
                    h.Password(servers.RabbitPassword);
                });
                cfg.ReceiveEndpoint(Queue, endpoint =>
                {
                    endpoint.UseConsumeFilter(typeof(InboxFilter<>), context);
                    endpoint.ConfigureConsumer<KeylessProbeConsumer>(context);
                });
            });
        });
        _services = services.BuildServiceProvider();
        _bus = _services.GetRequiredService<IBusControl>();
        using var started = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await _bus.StartAsync(started.Token);
    }

    public async Task DisposeAsync()
    {
        await _bus.StopAsync();
        await _services.DisposeAsync();
    }

    [Theory]
    [InlineData("42")]
    [InlineData("""{"id":"7d1f0c9e-8a8e-4d0b-9a59-0c6a1b1f2e3d"}""")]
    [InlineData("\"not an id\"")]
    [InlineData("true")]
    public async Task A_command_whose_original_message_id_header_is_no_id_runs_once_under_its_message_id(string headerJson)
    {
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var messageId = Guid.NewGuid();

        await producer.PublishRawAsync(Exchange, Envelope(messageId, "hostile", headerJson), RawAmqpProducer.EnvelopeContentType, messageId.ToString());

        await WaitForInboxKeyAsync(messageId);
        Assert.Equal("hostile", Assert.Single(_services.GetRequiredService<ProbeRuns>().Notes));
    }

    [Fact]
    public async Task Copies_sent_again_under_new_message_ids_run_once_under_the_original_id_their_header_names()
    {
        using var duplicates = WorkerMetric.Duplicates(Queue);
        duplicates.Watch(_services);
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var original = Guid.NewGuid();

        // As a producer that resends a message: a new MessageId each time, the first one in the header.
        await producer.PublishRawAsync(Exchange, Envelope(Guid.NewGuid(), "resent", $"\"{original}\""), RawAmqpProducer.EnvelopeContentType);
        await producer.PublishRawAsync(Exchange, Envelope(Guid.NewGuid(), "resent", $"\"{original}\""), RawAmqpProducer.EnvelopeContentType);

        await WaitForInboxKeyAsync(original);
        await Eventually.AssertAsync(() => Assert.Equal(1, duplicates.Count));
        Assert.Equal("resent", Assert.Single(_services.GetRequiredService<ProbeRuns>().Notes));
    }

    /// <summary>Until the inbox row of the probe's endpoint has <paramref name="key"/> (its run committed), and only it.</summary>
    private Task WaitForInboxKeyAsync(Guid key) =>
        Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var keys = await db.Inbox.AsNoTracking().Where(i => i.ConsumerId == Queue).Select(i => i.MessageKey).ToListAsync();
            Assert.Equal([key.ToString()], keys);
        });

    private static byte[] Envelope(Guid messageId, string note, string originalMessageIdJson) => RawAmqpProducer.Utf8(
        $$$"""{"messageId":"{{{messageId}}}","messageType":["{{{ProbeUrn}}}"],"sentTime":"{{{DateTimeOffset.UtcNow:O}}}","headers":{"MT-OriginalMessageId":{{{originalMessageIdJson}}}},"message":{"note":"{{{note}}}"}}""");
}

/// <summary>A command with no business key: the inbox knows it by its message ids only.</summary>
public sealed record KeylessProbe
{
    public required string Note { get; init; }
}

/// <summary>The notes of the probes that ran, in order.</summary>
public sealed class ProbeRuns
{
    private readonly ConcurrentQueue<string> _notes = new();

    public IReadOnlyList<string> Notes => [.. _notes];

    public void Add(string note) => _notes.Enqueue(note);
}

public sealed class KeylessProbeConsumer(ProbeRuns runs) : IConsumer<KeylessProbe>
{
    public Task Consume(ConsumeContext<KeylessProbe> context)
    {
        runs.Add(context.Message.Note);
        return Task.CompletedTask;
    }
}
