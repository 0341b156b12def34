using Conveyor.Api.Backpressure;
using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text.Json;
using Xunit.Abstractions;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class BackpressureTests(ConveyorFixture fixture, ITestOutputHelper output) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_full_queue_answers_429_with_retry_after_until_a_worker_drains_it()
    {
        // A worker declares the queues and leaves: what the Api publishes now waits in them.
        await (await fixture.StartWorkerAsync(WorkerSettings.With())).DisposeAsync();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Backpressure:RefreshMilliseconds"] = "100",
            ["Backpressure:MaxQueueDepth:charge-payment"] = "5",
            ["Backpressure:RetryAfterSeconds"] = "3",
        });
        for (var i = 0; i < 5; i++)
        {
            await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        }

        // Depths are read every 100 ms: a submission or two in between may still get in.
        var refusedPayment = Guid.Empty;
        await Eventually.AssertAsync(async () =>
        {
            refusedPayment = Guid.NewGuid();
            using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(refusedPayment));
            await response.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            Assert.Equal(TimeSpan.FromSeconds(3), response.Headers.RetryAfter?.Delta);
        }, TimeSpan.FromSeconds(15));

        await using (var db = fixture.CreateDbContext())
        {
            Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == refusedPayment.ToString("D")));
        }

        Assert.True(HostMeters.QueueGauge(api, BrokerPressureMonitor.DepthInstrument, JobKinds.ChargePayment) >= 5);
        // No worker consumes the queue now: what the "no consumers" alert watches.
        Assert.Equal(0, HostMeters.QueueGauge(api, BrokerPressureMonitor.ConsumersInstrument, JobKinds.ChargePayment));
        // Each kind has its own queue and limit.
        await api.Client.AcceptJobAsync(JobKinds.GenerateReport, JobRequests.GenerateReport(Guid.NewGuid()));

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await Eventually.AssertAsync(async () =>
        {
            using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }, TimeSpan.FromSeconds(30));
        await Eventually.AssertAsync(() => Assert.Equal(1, HostMeters.QueueGauge(api, BrokerPressureMonitor.ConsumersInstrument, JobKinds.ChargePayment)));
    }

    [Fact]
    public async Task A_batch_refused_for_a_full_queue_spends_one_permit_not_one_per_job()
    {
        await (await fixture.StartWorkerAsync(WorkerSettings.With())).DisposeAsync();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Backpressure:RefreshMilliseconds"] = "100",
            ["Backpressure:MaxQueueDepth:charge-payment"] = "1",
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "4",
        });
        await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        await Eventually.AssertAsync(() => Assert.True(HostMeters.QueueGauge(api, BrokerPressureMonitor.DepthInstrument, JobKinds.ChargePayment) >= 1));

        var now = JobBatchTests.Batch(Enumerable.Range(0, 3).Select(_ => JobRequests.ChargePayment(Guid.NewGuid())));
        using (var full = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, now))
        {
            await full.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            Assert.Equal("Job queue full", (await full.ReadJsonAsync()).GetProperty("title").GetString());
        }

        // Two of the client's four permits (or more, refilled) are still there: jobs scheduled for later do not wait for the queue.
        var runAt = DateTimeOffset.UtcNow.AddHours(1);
        var later = JobBatchTests.Batch(Enumerable.Range(0, 2).Select(_ => JobRequests.ScheduledChargePayment(Guid.NewGuid(), runAt)));
        using var scheduled = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, later);
        Assert.True(scheduled.StatusCode == HttpStatusCode.Accepted, $"{(int)scheduled.StatusCode} {await scheduled.Content.ReadAsStringAsync()}");
    }

    [Fact]
    public async Task A_repeat_of_an_accepted_job_is_answered_with_it_while_the_queue_is_full_and_a_new_job_is_not()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var api = await StartWithQueueLimitOfOneAsync();
        var paymentId = Guid.NewGuid();
        var key = $"repeat-{paymentId:N}";
        var request = JobRequests.ChargePayment(paymentId);
        await using (await fixture.StartWorkerAsync(WorkerSettings.With(gateway)))
        {
            using var accepted = await api.Client.PostJobAsync(JobKinds.ChargePayment, request, key);
            Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
            await fixture.WaitForJobAsync(paymentId, JobStatus.Succeeded);
        }

        // What a repeat gets while the queue is not full: the job, 202.
        using var unpressured = await api.Client.PostJobAsync(JobKinds.ChargePayment, request, key);
        Assert.Equal(HttpStatusCode.Accepted, unpressured.StatusCode);
        var answer = await unpressured.Content.ReadAsStringAsync();
        var queued = await FillQueueAsync(api);

        // The client whose answer was lost repeats its request: by its key, or by the business id alone.
        foreach (var repeatKey in new[] { key, null })
        {
            using var repeat = await api.Client.PostJobAsync(JobKinds.ChargePayment, request, repeatKey);
            Assert.Equal(HttpStatusCode.Accepted, repeat.StatusCode);
            Assert.Equal(answer, await repeat.Content.ReadAsStringAsync());
            Assert.Null(repeat.Headers.RetryAfter);
        }

        // The key with another request is refused as without pressure.
        using (var reused = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()), key))
        {
            await reused.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
            Assert.Equal("Idempotency-Key reused", (await reused.ReadJsonAsync()).GetProperty("title").GetString());
        }

        // A new job waits for the queue; so does a repeat of the job in it, whose command it would publish again.
        foreach (var refused in new[] { JobRequests.ChargePayment(Guid.NewGuid()), JobRequests.ChargePayment(queued) })
        {
            using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, refused);
            await response.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            Assert.Equal("Job queue full", (await response.ReadJsonAsync()).GetProperty("title").GetString());
            Assert.Equal(TimeSpan.FromSeconds(3), response.Headers.RetryAfter?.Delta);
        }

        Assert.Single(gateway.Charges);
    }

    [Fact]
    public async Task A_batch_sent_again_while_the_queue_is_full_gets_its_answers_when_every_job_was_accepted_before()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var api = await StartWithQueueLimitOfOneAsync();
        var paymentIds = new[] { Guid.NewGuid(), Guid.NewGuid() };
        var batch = JobBatchTests.Batch(paymentIds.Select(id => JobRequests.ChargePayment(id)));
        var key = $"batch-{paymentIds[0]:N}";
        await using (await fixture.StartWorkerAsync(WorkerSettings.With(gateway)))
        {
            using var accepted = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, batch, key);
            Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
            foreach (var paymentId in paymentIds)
            {
                await fixture.WaitForJobAsync(paymentId, JobStatus.Succeeded);
            }
        }

        using var unpressured = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, batch, key);
        Assert.Equal(HttpStatusCode.Accepted, unpressured.StatusCode);
        var answer = await unpressured.Content.ReadAsStringAsync();
        await FillQueueAsync(api);

        using (var repeat = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, batch, key))
        {
            Assert.Equal(HttpStatusCode.Accepted, repeat.StatusCode);
            Assert.Equal(answer, await repeat.Content.ReadAsStringAsync());
        }

        // The same jobs and a new one: the new one would join the queue, so the batch waits for it.
        var newPayment = Guid.NewGuid();
        var grown = JobBatchTests.Batch([.. paymentIds.Select(id => JobRequests.ChargePayment(id)), JobRequests.ChargePayment(newPayment)]);
        using (var refused = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, grown, key))
        {
            await refused.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            Assert.Equal("Job queue full", (await refused.ReadJsonAsync()).GetProperty("title").GetString());
            Assert.Equal(TimeSpan.FromSeconds(3), refused.Headers.RetryAfter?.Delta);
        }

        await using var db = fixture.CreateDbContext();
        Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == newPayment.ToString("D")));
    }

    [Fact]
    public async Task A_batch_with_a_new_job_whose_runAt_is_past_is_a_400_naming_it_while_the_queue_is_full()
    {
        await (await fixture.StartWorkerAsync(WorkerSettings.With())).DisposeAsync();
        await using var api = await StartWithQueueLimitOfOneAsync();
        await FillQueueAsync(api);

        // The client must fix the batch whatever the queue's depth: a 429 would have it wait, then refuse it all the same.
        var past = DateTimeOffset.UtcNow.AddHours(-1);
        var batch = JobBatchTests.Batch([JobRequests.ChargePayment(Guid.NewGuid()), JobRequests.ScheduledChargePayment(Guid.NewGuid(), past)]);
        using (var refused = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, batch))
        {
            Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
            Assert.Equal(["jobs[1].runAt"], await refused.ReadErrorFieldsAsync());
            Assert.Null(refused.Headers.RetryAfter);
        }

        // Alone, such a job is not held up by the queue either.
        using (var single = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), past)))
        {
            Assert.Equal(HttpStatusCode.BadRequest, single.StatusCode);
            Assert.Equal(["runAt"], await single.ReadErrorFieldsAsync());
        }
    }

    [Fact]
    public async Task While_the_broker_blocks_publishers_a_repeat_of_a_job_due_soon_is_answered_with_it_and_a_new_job_gets_503()
    {
        await using var management = await FakeRabbitManagement.StartAsync();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:ManagementPort"] = management.Port.ToString(CultureInfo.InvariantCulture),
            ["Backpressure:RefreshMilliseconds"] = "100",
            ["RateLimiting:Enabled"] = "false",
        });
        // Due within the gate's minute: it waits for the broker as an immediate job does, yet its row holds its
        // command until then, so a repeat publishes nothing.
        var paymentId = Guid.NewGuid();
        var request = JobRequests.ScheduledChargePayment(paymentId, DateTimeOffset.UtcNow.AddSeconds(45));
        var key = $"soon-{paymentId:N}";
        using (var accepted = await api.Client.PostJobAsync(JobKinds.ChargePayment, request, key))
        {
            Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        }

        using var unpressured = await api.Client.PostJobAsync(JobKinds.ChargePayment, request, key);
        Assert.Equal(HttpStatusCode.Accepted, unpressured.StatusCode);
        var answer = await unpressured.Content.ReadAsStringAsync();

        management.MemoryAlarm = true;
        var monitor = api.Services.GetRequiredService<BrokerPressureMonitor>();
        await Eventually.AssertAsync(() => Assert.True(monitor.Current.PublishersBlocked, "the monitor has not read the alarm yet"));

        using (var repeat = await api.Client.PostJobAsync(JobKinds.ChargePayment, request, key))
        {
            Assert.Equal(HttpStatusCode.Accepted, repeat.StatusCode);
            Assert.Equal(answer, await repeat.Content.ReadAsStringAsync());
        }

        using var refused = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        await refused.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.NotNull(refused.Headers.RetryAfter);
    }

    [Fact]
    public async Task A_submission_refused_for_a_broker_alarm_keeps_its_503_when_the_database_cannot_be_read_for_a_repeat()
    {
        await using var management = await FakeRabbitManagement.StartAsync();
        management.MemoryAlarm = true;
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = new Npgsql.NpgsqlConnectionStringBuilder(fixture.ConnectionString)
            {
                Host = "127.0.0.1",
                Port = ClosedPort.Number,
            }.ConnectionString,
            ["RabbitMq:ManagementPort"] = management.Port.ToString(CultureInfo.InvariantCulture),
            ["Backpressure:RefreshMilliseconds"] = "100",
            ["Backpressure:RetryAfterSeconds"] = "3",
            ["RateLimiting:Enabled"] = "false",
        });
        var monitor = api.Services.GetRequiredService<BrokerPressureMonitor>();
        await Eventually.AssertAsync(() => Assert.True(monitor.Current.PublishersBlocked, "the monitor has not read the alarm yet"));

        // The lookup for a repeat fails: the gate's answer stands, not the database's 503 (nor a 500).
        using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()), "key-of-a-repeat");
        await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.Equal("Message broker blocking publishers", (await response.ReadJsonAsync()).GetProperty("title").GetString());
        Assert.Equal(TimeSpan.FromSeconds(3), response.Headers.RetryAfter?.Delta);
    }

    /// <summary>An Api whose charge-payment queue is full with one waiting job, its depth read every 100 ms.</summary>
    /// <summary>
    /// A request with a runAt an hour ahead, or one whose time has passed, passes no gate of its own, yet may repeat a job
    /// submitted to run now: answering it within that job's publish budget publishes the job's command again. While the
    /// queue is full that waits as any such repeat does (429), alone or in a batch, and a new job scheduled for later
    /// still gets in. Before, each such repeat was a 202 that put one more copy of the command into the full queue.
    /// </summary>
    [Fact]
    public async Task A_scheduled_repeat_of_a_job_in_the_full_queue_waits_for_it_and_publishes_nothing()
    {
        await (await fixture.StartWorkerAsync(WorkerSettings.With())).DisposeAsync();
        await using var api = await StartWithQueueLimitOfOneAsync();
        var queued = await FillQueueAsync(api);
        var ready = await fixture.ReadyAsync(JobKinds.ChargePayment);

        foreach (var runAt in new[] { DateTimeOffset.UtcNow.AddHours(1), DateTimeOffset.UtcNow.AddMinutes(-1) })
        {
            using var repeat = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(queued, runAt));
            await repeat.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            Assert.Equal("Job queue full", (await repeat.ReadJsonAsync()).GetProperty("title").GetString());
            Assert.Equal(TimeSpan.FromSeconds(3), repeat.Headers.RetryAfter?.Delta);
        }

        var later = Guid.NewGuid();
        using (var batch = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment, JobBatchTests.Batch(
            [JobRequests.ScheduledChargePayment(later, DateTimeOffset.UtcNow.AddHours(1)), JobRequests.ScheduledChargePayment(queued, DateTimeOffset.UtcNow.AddHours(1))])))
        {
            await batch.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            var jobs = (await batch.ReadJsonAsync()).GetProperty("jobs");
            Assert.Equal(JobStatus.Scheduled, jobs[0].GetProperty("status").GetString());
            Assert.Equal(StatusCodes.Status429TooManyRequests, jobs[1].GetProperty("error").GetProperty("status").GetInt32());
            Assert.Equal(TimeSpan.FromSeconds(3), batch.Headers.RetryAfter?.Delta);
        }

        Assert.Equal(ready, await fixture.ReadyAsync(JobKinds.ChargePayment));
    }

    private Task<RunningApp> StartWithQueueLimitOfOneAsync() =>
        fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Backpressure:RefreshMilliseconds"] = "100",
            ["Backpressure:MaxQueueDepth:charge-payment"] = "1",
            ["Backpressure:RetryAfterSeconds"] = "3",
            ["RateLimiting:Enabled"] = "false",
        });

    /// <summary>
    /// Queues one charge while no worker consumes (a worker ran before, so the queue exists), until the Api
    /// refuses a new one for the full queue; the charge's payment id.
    /// </summary>
    private static async Task<Guid> FillQueueAsync(RunningApp api)
    {
        var paymentId = Guid.NewGuid();
        await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        await Eventually.AssertAsync(async () =>
        {
            using var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
            await response.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        }, TimeSpan.FromSeconds(15));
        return paymentId;
    }

    [Fact]
    public async Task A_job_scheduled_to_run_within_a_minute_waits_for_a_full_queue_as_an_immediate_one_does()
    {
        await (await fixture.StartWorkerAsync(WorkerSettings.With())).DisposeAsync();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Backpressure:RefreshMilliseconds"] = "100",
            ["Backpressure:MaxQueueDepth:charge-payment"] = "1",
            ["RateLimiting:Enabled"] = "false",
        });
        await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        await Eventually.AssertAsync(() => Assert.True(HostMeters.QueueGauge(api, BrokerPressureMonitor.DepthInstrument, JobKinds.ChargePayment) >= 1));

        // Told 429, a client sends the job again to run half a minute from now, within the gate's minute: it would
        // join the queue as soon. Not a second from now: a request that took that long to arrive (a busy machine)
        // would carry a past runAt, refused as invalid (400) before any gate.
        var soon = Guid.NewGuid();
        using (var single = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(soon, DateTimeOffset.UtcNow.AddSeconds(30))))
        {
            await single.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        }

        using (var batch = await JobBatchTests.PostBatchAsync(api, JobKinds.ChargePayment,
            JobBatchTests.Batch([JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddSeconds(30))])))
        {
            await batch.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
        }

        // One due later is accepted, the queue being full or not.
        await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddMinutes(10)));
        await using var db = fixture.CreateDbContext();
        Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == soon.ToString("D")));
        Assert.Equal(2, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task A_slow_consumer_never_holds_more_unacked_messages_than_its_prefetch()
    {
        const int prefetch = 3;
        const int jobs = 72;
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.Latency = TimeSpan.FromMilliseconds(500);
        var settings = WorkerSettings.With(gateway);
        settings["Consumers:ChargePayment:PrefetchCount"] = prefetch.ToString(CultureInfo.InvariantCulture);
        settings["Consumers:ChargePayment:ConcurrentMessageLimit"] = prefetch.ToString(CultureInfo.InvariantCulture);
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);

        for (var i = 0; i < jobs; i++)
        {
            await publisher.PublishAsync(new ChargePayment
            {
                PaymentId = Guid.NewGuid(),
                AccountId = "acct-slow",
                AmountMinor = 100 + i,
                Currency = "EUR",
            });
        }

        // About 12 s of work at 3 x 500 ms; the management API refreshes its counters every 5 s,
        // so sampling the whole drain sees several readings in the middle of it.
        var unacked = new List<long>();
        var deadline = Stopwatch.StartNew();
        while (gateway.Charges.Count < jobs && deadline.Elapsed < TimeSpan.FromSeconds(90))
        {
            if ((await fixture.Rabbit.QueueAsync(fixture.VirtualHost, JobKinds.ChargePayment))?.Unacked is { } held)
            {
                unacked.Add(held);
            }

            await Task.Delay(TimeSpan.FromMilliseconds(200));
        }

        output.WriteLine($"unacked samples: {string.Join(" ", unacked)}");
        Assert.Equal(jobs, gateway.Charges.Count);
        Assert.InRange(unacked.Max(), 1, prefetch);
    }

    [Fact]
    public async Task While_the_broker_blocks_publishers_submissions_answer_503_without_trying_it_and_scheduled_jobs_still_get_in()
    {
        await using var management = await FakeRabbitManagement.StartAsync();
        management.MemoryAlarm = true;
        // The Api reaches the broker through a relay the test stalls, as a broker in an alarm stalls its
        // publishers: a publish tried now would end in another answer (the publish's own 503, once its
        // budget is spent), and its bytes, held in the relay, would reach the exchange on Resume.
        var broker = fixture.RabbitOptions();
        await using var relay = await OutageProxy.ToAsync(broker.Host, broker.Port);
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:Port"] = relay.Port.ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ManagementPort"] = management.Port.ToString(CultureInfo.InvariantCulture),
            ["Backpressure:RefreshMilliseconds"] = "100",
        });
        try
        {
            // Connected through the relay, and the alarm read.
            await api.WaitUntilReadyAsync();
            var monitor = api.Services.GetRequiredService<BrokerPressureMonitor>();
            await Eventually.AssertAsync(() => Assert.True(monitor.Current.PublishersBlocked, "the monitor has not read the alarm yet"));
            relay.Stall();

            var refused = Guid.NewGuid();
            using (var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(refused)))
            {
                await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
                Assert.NotNull(response.Headers.RetryAfter);
                Assert.Contains("memory alarm on rabbit@a", (await response.ReadJsonAsync()).GetProperty("detail").GetString(), StringComparison.Ordinal);
            }

            await using (var db = fixture.CreateDbContext())
            {
                Assert.False(await db.Jobs.AnyAsync(j => j.BusinessKey == refused.ToString("D")));
            }

            // A scheduled job only writes to PostgreSQL now: it gets in with the broker stalled.
            var scheduled = await api.Client.AcceptJobAsync(JobKinds.ChargePayment,
                JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));
            Assert.Equal(JobStatus.Scheduled, scheduled.Status);

            management.MemoryAlarm = false;
            relay.Resume();
            await Eventually.AssertAsync(() => Assert.False(monitor.Current.PublishersBlocked, "the monitor has not read the alarm's end yet"));
            var accepted = Guid.NewGuid();
            using (var response = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(accepted)))
            {
                Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
            }

            // Publisher confirms: the accepted command is on the exchange by the time of its 202, behind
            // anything the relay held. It is the only one: the refused submission published nothing.
            Assert.Equal(1u, await published.Channel.MessageCountAsync(published.Queue));
            var message = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
            using var envelope = JsonDocument.Parse(message!.Body);
            Assert.Equal(accepted, envelope.RootElement.GetProperty("message").GetProperty("paymentId").GetGuid());
        }
        finally
        {
            // The Api stops through the relay.
            relay.Resume();
        }
    }
}
