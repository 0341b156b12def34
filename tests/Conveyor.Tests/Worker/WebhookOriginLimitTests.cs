using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics.Metrics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Redelivery;
using Conveyor.Worker.Webhooks;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// One receiver that answers slowly must not hold back every other receiver's webhooks: the worker
/// delivers to one origin at most <c>Webhooks:MaxConcurrentPerOrigin</c> at a time, and a delivery
/// whose origin is at that limit is set aside (stored, published again a moment later) instead of
/// holding one of the endpoint's slots while it waits, without spending an attempt.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookOriginLimitTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int SlowWebhooks = 6;
    private const int PerOrigin = 2;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_receiver_holding_its_origins_deliveries_does_not_hold_back_another_receivers_webhook()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        await using var fast = await FakeWebhookReceiver.StartAsync();
        var settings = WorkerSettings.With().Override(
            // Four slots: without a limit per origin, the slow receiver's six webhooks take them all.
            ("Consumers:DeliverWebhook:ConcurrentMessageLimit", "4"),
            ("Consumers:DeliverWebhook:PrefetchCount", "4"),
            ("Webhooks:MaxConcurrentPerOrigin", PerOrigin.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            // Held open well past the test's waits: a delivery timing out would be retried, not the point here.
            ("Webhooks:TimeoutSeconds", "60"));
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await fixture.DeclareAsync("deliver-webhook_error");

        var held = Enumerable.Range(0, SlowWebhooks).Select(i => Webhook(slow, i)).ToList();
        foreach (var webhook in held)
        {
            await publisher.PublishAsync(webhook);
        }

        await Eventually.AssertAsync(() => Assert.Equal(PerOrigin, slow.Deliveries.Count));
        var other = Webhook(fast, 100);
        await publisher.PublishAsync(other);

        // Delivered and committed while the slow receiver still holds its origin's deliveries open.
        await fixture.WaitForJobAsync(other.WebhookId, JobStatus.Succeeded);
        Assert.Single(fast.Deliveries);
        Assert.Equal(PerOrigin, slow.Deliveries.Count);

        // Each set-aside delivery comes back and is delivered once, no attempt spent on waiting.
        release.SetResult();
        foreach (var webhook in held)
        {
            var job = await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
            Assert.Null(job.LastError);
        }

        var keys = slow.Deliveries.Select(d => d.Headers["Idempotency-Key"]).ToList();
        Assert.Equal(held.Select(w => w.WebhookId.ToString()).Order(), keys.Order());
        await using var db = fixture.CreateDbContext();
        Assert.Equal(SlowWebhooks + 1, await db.WebhookDeliveries.CountAsync());
        Assert.Equal(0u, await fixture.ReadyAsync("deliver-webhook_error"));
    }

    [Fact]
    public async Task A_delivery_set_aside_as_often_as_allowed_goes_ahead_over_its_origins_limit()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        var settings = OneSlotTwoDeferrals();
        var logs = new CapturedLogs();
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        var first = Webhook(slow, 1);
        await publisher.PublishAsync(first);
        await Eventually.AssertAsync(() => Assert.Single(slow.Deliveries));
        var second = Webhook(slow, 2);
        await publisher.PublishAsync(second);

        // Set aside twice while the first is held, then delivered beside it: never put off without end.
        await Eventually.AssertAsync(() => Assert.Equal(2, slow.Deliveries.Count));
        release.SetResult();
        await fixture.WaitForJobAsync(first.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        await fixture.WaitForJobAsync(second.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        Assert.Equal(2, logs.Of(LogLevel.Debug, "Conveyor.Worker.Jobs").Count(e => e.Message.Contains($"webhook {second.WebhookId}: ", StringComparison.Ordinal)
            && e.Message.Contains("set aside", StringComparison.Ordinal)));
        Assert.DoesNotContain(logs.Of(LogLevel.Debug, "Conveyor.Worker.Jobs"), e => e.Message.Contains($"webhook {first.WebhookId}: ", StringComparison.Ordinal));
    }

    /// <summary>
    /// A delivery that has used up its times aside goes ahead over the limit, and it did so with the endpoint's whole
    /// in-memory retry budget: a failing receiver's deliveries over its limit held endpoint slots through every retry
    /// wait (here four requests before the redelivery was stored). And the count travelled with the stored retry, so
    /// every later attempt was over the limit at once. Now such a delivery gets one try, and its retry starts the
    /// count again.
    /// </summary>
    [Fact]
    public async Task A_delivery_over_its_origins_limit_gets_one_try_and_its_retry_starts_the_count_again()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        receiver.AnswerWith = System.Net.HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Webhooks:MaxConcurrentPerOrigin", "1"),
            ("Webhooks:MaxOriginDeferrals", "2"),
            ("Consumers:DeliverWebhook:RetryLimit", "3"),
            ("Consumers:DeliverWebhook:RedeliveryLimit", "3"),
            // Far beyond the test: the stored retry is only looked at.
            ("Consumers:DeliverWebhook:RedeliveryBaseDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:RedeliveryMaxDelayMilliseconds", "600000"),
            ("Consumers:DeliverWebhook:KillSwitchTripPercent", "0")));
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var webhookId = Guid.NewGuid();

        // As it comes back after its second time aside, sealed by the worker.
        var sealedCount = worker.Services.GetRequiredService<RedeliverySeal>().SealOriginDeferrals(
            Conveyor.Contracts.JobKinds.DeliverWebhook, webhookId.ToString(), 2);
        await PublishDirectlyAsync(producer, webhookId, receiver, 1,
            new Dictionary<string, string> { ["Conveyor-Origin-Deferrals"] = "2", [RedeliverySeal.OriginDeferralsHeader] = sealedCount });

        await fixture.WaitForJobAsync(webhookId.ToString(), JobStatus.RetryScheduled, attempts: 1);
        Assert.Single(receiver.Deliveries);
        await using var db = fixture.CreateDbContext();
        var stored = JsonSerializer.Deserialize<Dictionary<string, string>>((await db.ScheduledMessages.AsNoTracking().SingleAsync()).Headers)!;
        Assert.DoesNotContain(stored.Keys, k => k.StartsWith("Conveyor-Origin-Deferrals", StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>
    /// The count of times aside travels in <c>Conveyor-Origin-Deferrals</c>, which any producer can set: a command
    /// published with "2147483647" (or the limit itself) was over its origin's limit on arrival and went straight to a
    /// receiver that already had its limit in flight (here its second delivery while the first was held), so a
    /// producer could put any number of one receiver's webhooks in flight at once and fill the endpoint's slots. The
    /// count now counts only when the worker sealed it for this webhook: this one is set aside as any first delivery is.
    /// </summary>
    [Theory]
    [InlineData("2147483647", false)]
    [InlineData("2", false)]
    [InlineData("2", true)]
    public async Task A_producers_own_count_of_times_aside_does_not_take_a_delivery_past_its_origins_limit(string forged, bool withAnotherWebhooksSeal)
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        var settings = OneSlotTwoDeferrals();
        var logs = new CapturedLogs();
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);

        var first = Webhook(slow, 1);
        await publisher.PublishAsync(first);
        await Eventually.AssertAsync(() => Assert.Single(slow.Deliveries));
        var webhookId = Guid.NewGuid();
        var headers = new Dictionary<string, string> { ["Conveyor-Origin-Deferrals"] = forged };
        if (withAnotherWebhooksSeal)
        {
            // A genuine seal, taken from a copy of another webhook's.
            headers[RedeliverySeal.OriginDeferralsHeader] = worker.Services.GetRequiredService<RedeliverySeal>().SealOriginDeferrals(
                Conveyor.Contracts.JobKinds.DeliverWebhook, first.WebhookId.ToString(), int.Parse(forged, System.Globalization.CultureInfo.InvariantCulture));
        }

        await PublishDirectlyAsync(producer, webhookId, slow, 2, headers);

        bool SetAside(int deferral) => logs.Of(LogLevel.Debug, "Conveyor.Worker.Jobs").Any(e =>
            e.Message.Contains($"webhook {webhookId}: ", StringComparison.Ordinal) && e.Message.Contains($"set aside ({deferral})", StringComparison.Ordinal));
        await Eventually.AssertAsync(() => Assert.True(SetAside(1), "set aside once"));
        Assert.Single(slow.Deliveries);

        release.SetResult();
        await fixture.WaitForJobAsync(first.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        await fixture.WaitForJobAsync(webhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        Assert.Equal(2, slow.Deliveries.Count);
    }

    /// <summary>
    /// The limit is the receiver's, not each worker's: two workers with two slots per origin each held four of the
    /// slow receiver's deliveries open at once (each counted only its own). Their slots are now advisory locks in
    /// the database, so two in all; the rest are set aside again and again until those end.
    /// </summary>
    [Fact]
    public async Task Workers_together_deliver_to_an_origin_at_most_its_limit_at_once()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        var settings = WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:ConcurrentMessageLimit", "4"),
            ("Consumers:DeliverWebhook:PrefetchCount", "4"),
            ("Webhooks:MaxConcurrentPerOrigin", PerOrigin.ToString(System.Globalization.CultureInfo.InvariantCulture)),
            ("Webhooks:TimeoutSeconds", "60"),
            ("Logging:LogLevel:Conveyor.Worker.Jobs", "Debug"));
        var logs = new[] { new CapturedLogs(), new CapturedLogs() };
        await using var first = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs[0]));
        await using var second = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs[1]));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        var held = Enumerable.Range(0, SlowWebhooks).Select(i => Webhook(slow, i)).ToList();
        foreach (var webhook in held)
        {
            await publisher.PublishAsync(webhook);
        }

        // Both workers took deliveries (each has set some aside, or delivered), and the four left over have each been
        // set aside more than once: every worker had its chance at the origin meanwhile.
        int SetAside(CapturedLogs log) => log.Of(LogLevel.Debug, "Conveyor.Worker.Jobs").Count(e => e.Message.Contains("set aside", StringComparison.Ordinal));
        await Eventually.AssertAsync(() => Assert.True(SetAside(logs[0]) + SetAside(logs[1]) >= 3 * (SlowWebhooks - PerOrigin),
            $"set aside {SetAside(logs[0])} + {SetAside(logs[1])} times"), TimeSpan.FromSeconds(60));
        Assert.Equal(PerOrigin, slow.Deliveries.Count);
        Assert.Equal(PerOrigin, await OriginSlotsHeldAsync());

        release.SetResult();
        foreach (var webhook in held)
        {
            await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        }

        Assert.Equal(SlowWebhooks, slow.Deliveries.Count);
        // Every slot given back: none is left held for the next deliveries of either worker.
        await Eventually.AssertAsync(async () => Assert.Equal(0, await OriginSlotsHeldAsync()));
    }

    /// <summary>
    /// Two origins whose lock keys agreed shared one set of slots: a key held 22 bits of the origin's hash, so among a
    /// few thousand receivers two likely agreed, and one's slow deliveries set the other's aside (here its take
    /// answered Full while the first origin held its only slot). A key now holds 46 bits of it.
    /// </summary>
    [Fact]
    public async Task Origins_whose_22_bit_hashes_agree_do_not_share_slots()
    {
        var (first, second) = OriginsWhose22BitHashesAgree();
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        await using var leases = new WebhookOriginLeases(
            fixture.ConnectionString, services.GetRequiredService<IMeterFactory>(), TimeProvider.System, NullLogger<WebhookOriginLeases>.Instance);

        Assert.Equal(OriginLeaseState.Taken, (await leases.TryTakeAsync(first, 1)).State);
        Assert.Equal(OriginLeaseState.Taken, (await leases.TryTakeAsync(second, 1)).State);
        Assert.Equal(2, await OriginSlotsHeldAsync());
        // Each origin's own limit still holds.
        Assert.Equal(OriginLeaseState.Full, (await leases.TryTakeAsync(first, 1)).State);
        Assert.Equal(OriginLeaseState.Full, (await leases.TryTakeAsync(second, 1)).State);
    }

    /// <summary>Two origins (as <see cref="WebhookOriginSlots.OriginOf"/> writes them) whose SHA-256 hashes agree in their first 22 bits.</summary>
    private static (string First, string Second) OriginsWhose22BitHashesAgree()
    {
        var seen = new Dictionary<uint, string>();
        for (var i = 0; ; i++)
        {
            var origin = $"https://receiver-{i}.example:443";
            var hash22 = BinaryPrimitives.ReadUInt32BigEndian(SHA256.HashData(Encoding.UTF8.GetBytes(origin))) >> 10;
            if (seen.TryGetValue(hash22, out var earlier))
            {
                return (earlier, origin);
            }

            seen[hash22] = origin;
        }
    }

    /// <summary>The origin slots (one-bigint advisory locks whose top byte is "W") held on this run's database.</summary>
    private async Task<long> OriginSlotsHeldAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("""
            SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND objsubid = 1 AND classid::bigint >> 24 = x'57'::int AND granted
            """, connection);
        return (long)(await command.ExecuteScalarAsync() ?? 0L);
    }

    /// <summary>
    /// The workers' slots live in one database session per worker. When it ends (here: terminated by the server,
    /// as a failover or an administrator would), the limit must not stop webhooks: the worker counts its own
    /// deliveries meanwhile, says so once (and counts each such delivery in <c>conveyor.webhooks.admitted_locally</c>,
    /// which did not exist: nothing but one log line said the limit was no longer shared), and opens a session again.
    /// </summary>
    [Fact]
    public async Task Webhooks_go_on_when_the_session_holding_the_origin_slots_ends()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        var settings = WorkerSettings.With().Override(("Webhooks:MaxConcurrentPerOrigin", "1"));
        var logs = new CapturedLogs();
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        using var metrics = new OriginSlotMetrics(worker.Services.GetRequiredService<IMeterFactory>());

        var first = Webhook(receiver, 1);
        await publisher.PublishAsync(first);
        await fixture.WaitForJobAsync(first.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        Assert.Empty(metrics.AdmittedLocally);
        Assert.Equal(1, metrics.SessionUp());
        Assert.Equal(1, await SlotSessionsAsync(terminate: true));

        var after = Enumerable.Range(2, 3).Select(i => Webhook(receiver, i)).ToList();
        foreach (var webhook in after)
        {
            await publisher.PublishAsync(webhook);
            await fixture.WaitForJobAsync(webhook.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
        }

        Assert.Single(logs.Of(LogLevel.Warning, typeof(WebhookOriginLeases).FullName!),
            e => e.Message.Contains("session holding them failed", StringComparison.Ordinal));
        // At least the first delivery after the session ended went by the worker's count (the later ones too, unless
        // the session was open again by then).
        Assert.NotEmpty(metrics.AdmittedLocally);
        Assert.All(metrics.AdmittedLocally, reason => Assert.Equal(OriginSlotsUnread.SessionDown, reason));

        // Opened again once the pause after the failure is over; the gauge says so.
        await Eventually.AssertAsync(() => Assert.Equal(1, metrics.SessionUp()));
        await Eventually.AssertAsync(async () =>
        {
            var next = Webhook(receiver, 10);
            await publisher.PublishAsync(next);
            await fixture.WaitForJobAsync(next.WebhookId.ToString(), JobStatus.Succeeded, attempts: 1);
            Assert.Equal(1, await SlotSessionsAsync(terminate: false));
        }, TimeSpan.FromSeconds(60));
    }

    /// <summary>
    /// The gauge <c>conveyor.webhooks.origin_session.up</c> reads 0 from the session's failure until it is open again,
    /// however long that takes (here the clock stands still, so the pause before it is opened again does not end until
    /// the test moves it), and each take meanwhile is counted with its reason. Before, neither instrument existed.
    /// </summary>
    [Fact]
    public async Task The_origin_session_gauge_reads_0_from_the_sessions_failure_until_it_is_open_again_and_counts_each_take_meanwhile()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var meters = services.GetRequiredService<IMeterFactory>();
        using var metrics = new OriginSlotMetrics(meters);
        var clock = new HeldClock(DateTimeOffset.UtcNow);
        await using var leases = new WebhookOriginLeases(fixture.ConnectionString, meters, clock, NullLogger<WebhookOriginLeases>.Instance);
        const string origin = "https://receiver.example:443";

        Assert.Equal(1, metrics.SessionUp());
        Assert.Equal(OriginLeaseState.Taken, (await leases.TryTakeAsync(origin, 2)).State);
        Assert.Equal(1, await SlotSessionsAsync(terminate: true));

        // The next take meets the ended session: its delivery goes by this worker's count, and so does the one after,
        // while the session waits to be opened again.
        Assert.Equal(OriginLeaseState.Unknown, (await leases.TryTakeAsync(origin, 2)).State);
        Assert.Equal(0, metrics.SessionUp());
        Assert.Equal(OriginLeaseState.Unknown, (await leases.TryTakeAsync(origin, 2)).State);
        Assert.Equal(0, metrics.SessionUp());
        Assert.Equal([OriginSlotsUnread.SessionDown, OriginSlotsUnread.SessionDown], metrics.AdmittedLocally);

        // Once the pause is over, opened again by the worker itself, no take needed.
        clock.Advance(WebhookOriginLeases.ReopenAfter);
        await Eventually.AssertAsync(() => Assert.Equal(1, metrics.SessionUp()));
        Assert.Equal(1, await SlotSessionsAsync(terminate: false));
        Assert.Equal(OriginLeaseState.Taken, (await leases.TryTakeAsync(origin, 2)).State);
        Assert.Equal(2, metrics.AdmittedLocally.Count);
    }

    /// <summary>The worker sessions holding origin slots on this run's database; ended by the server if <paramref name="terminate"/>.</summary>
    private async Task<long> SlotSessionsAsync(bool terminate)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand($"""
            SELECT count(*) FILTER (WHERE {(terminate ? "pg_terminate_backend(pid)" : "true")}) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'conveyor-worker-webhook-origins'
            """, connection);
        return (long)(await command.ExecuteScalarAsync() ?? 0L);
    }

    /// <summary>
    /// With the shipped settings (16 slots, 4 per origin): each of the slow origin's deliveries, arriving one at a
    /// time, did sit alone in an inbox batch that commits when its consumer ends, and InboxConcurrentBatches (4) of
    /// them left no batch for the other receiver's webhook. Webhooks now take one inbox transaction each (ADR 0004).
    /// </summary>
    [Fact]
    public async Task A_receiver_holding_its_origins_deliveries_in_separate_inbox_batches_does_not_hold_back_another_receivers_webhook()
    {
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var slow = await FakeWebhookReceiver.StartAsync();
        slow.HoldDeliveries = release.Task;
        await using var fast = await FakeWebhookReceiver.StartAsync();
        // The defaults: 16 slots, 4 per origin, 4 inbox batches in flight; held open past the wait below.
        var settings = WorkerSettings.With().Override(("Webhooks:TimeoutSeconds", "120"), ("Consumers:DeliverWebhook:PrefetchCount", "16"));
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        // One at a time: each held delivery is the only member of its inbox batch, which waits for it.
        for (var i = 0; i < 4; i++)
        {
            await publisher.PublishAsync(Webhook(slow, i));
            await Eventually.AssertAsync(() => Assert.Equal(i + 1, slow.Deliveries.Count));
        }

        var other = Webhook(fast, 100);
        await publisher.PublishAsync(other);
        await Eventually.AssertAsync(() => Assert.Single(fast.Deliveries));
        Assert.Equal(4, slow.Deliveries.Count);
        release.SetResult();
    }

    /// <summary>
    /// The origin slots' instruments of the worker (or leases) built on the meter factory given: each delivery the
    /// counter <c>conveyor.webhooks.admitted_locally</c> counted since this was made, by reason, and the gauge now.
    /// </summary>
    private sealed class OriginSlotMetrics : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly ConcurrentQueue<string?> _admitted = new();
        private readonly Lock _gaugeLock = new();
        private readonly List<int> _gauge = [];

        public OriginSlotMetrics(IMeterFactory meters)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Scope == meters && instrument.Meter.Name == JobMetrics.MeterName
                    && instrument.Name is WebhookOriginLeases.AdmittedLocallyInstrument or WebhookOriginLeases.SessionUpInstrument)
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((_, value, tags, _) =>
            {
                string? reason = null;
                foreach (var tag in tags)
                {
                    reason = tag.Key == "reason" ? tag.Value as string : reason;
                }

                for (var i = 0; i < value; i++)
                {
                    _admitted.Enqueue(reason);
                }
            });
            _listener.SetMeasurementEventCallback<int>((_, value, _, _) => _gauge.Add(value));
            _listener.Start();
        }

        public IReadOnlyList<string?> AdmittedLocally => [.. _admitted];

        /// <summary>The gauge <c>conveyor.webhooks.origin_session.up</c>, observed now.</summary>
        public int SessionUp()
        {
            lock (_gaugeLock)
            {
                _gauge.Clear();
                _listener.RecordObservableInstruments();
                return Assert.Single(_gauge);
            }
        }

        public void Dispose() => _listener.Dispose();
    }

    /// <summary>A clock that stands still until the test moves it (its timers are the system's).</summary>
    private sealed class HeldClock(DateTimeOffset start) : TimeProvider
    {
        private long _ticks = start.UtcTicks;

        public void Advance(TimeSpan by) => Interlocked.Add(ref _ticks, by.Ticks);

        public override DateTimeOffset GetUtcNow() => new(Interlocked.Read(ref _ticks), TimeSpan.Zero);
    }

    private static DeliverWebhook Webhook(FakeWebhookReceiver receiver, int n) => new()
    {
        WebhookId = Guid.NewGuid(),
        Url = receiver.Url(),
        EventType = "invoice.created",
        Payload = JsonDocument.Parse($$"""{"invoice":{{n}}}""").RootElement,
    };

    /// <summary>One slot per origin and two times aside, receivers held past the test's waits, and the set-asides logged.</summary>
    private static Dictionary<string, string?> OneSlotTwoDeferrals() => WorkerSettings.With().Override(
        ("Webhooks:MaxConcurrentPerOrigin", "1"),
        ("Webhooks:MaxOriginDeferrals", "2"),
        ("Webhooks:TimeoutSeconds", "60"),
        ("Logging:LogLevel:Conveyor.Worker.Jobs", "Debug"));

    /// <summary>A webhook command published as a producer of its own would, with the headers it chooses.</summary>
    private static Task PublishDirectlyAsync(RawAmqpProducer producer, Guid webhookId, FakeWebhookReceiver receiver, int invoice, Dictionary<string, string> headers) =>
        producer.PublishEnvelopeAsync(
            "Conveyor.Contracts.Webhooks:DeliverWebhook", "urn:message:Conveyor.Contracts.Webhooks:DeliverWebhook",
            new { webhookId, url = receiver.Url(), eventType = "invoice.created", payload = new { invoice } }, headers: headers);
}
