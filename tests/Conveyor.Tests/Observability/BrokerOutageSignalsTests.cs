using System.Globalization;
using System.Net;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Observability;

/// <summary>
/// What the Api and the worker tell their probes and Prometheus while they cannot reach RabbitMQ (the
/// test cuts a relay in front of the shared broker, and one in front of a stand-in management API):
/// readiness 503 and back to 200, the per-queue series absent rather than frozen on their last value,
/// and the age of the Api's last reading growing, for the alert that says why they are absent.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class BrokerOutageSignalsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string JobQueuesAge = "conveyor_broker_reading_age_seconds";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task While_the_Api_cannot_read_the_broker_it_is_unready_its_queue_series_go_absent_and_their_age_grows()
    {
        // A worker consumes every job queue, on a connection of its own that the test leaves alone.
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var management = await FakeRabbitManagement.StartAsync();
        management.Queues = [new() { ["name"] = "charge-payment_error", ["messages"] = 3, ["consumers"] = 0 }];
        var broker = fixture.RabbitOptions();
        await using var amqp = await OutageProxy.ToAsync(broker.Host, broker.Port);
        await using var http = await OutageProxy.ToAsync("127.0.0.1", management.Port);
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:Port"] = amqp.Port.ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ManagementPort"] = http.Port.ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ConnectTimeoutSeconds"] = "2",
            ["Backpressure:RefreshMilliseconds"] = "200",
            ["ErrorQueues:DepthRefreshSeconds"] = "1",
        });

        await AssertReadyAsync(api);
        await Eventually.AssertAsync(async () =>
        {
            var metrics = await MetricsAsync(api);
            // At least this test's worker (a worker of an earlier test may not have left the vhost yet).
            Assert.True(PrometheusText.Sum(metrics, "conveyor_queue_consumers", $"queue=\"{JobKinds.ChargePayment}\"") >= 1, "no consumer reported");
            Assert.Equal(3, PrometheusText.Sum(metrics, "conveyor_error_queue_depth", "queue=\"charge-payment_error\""));
            Assert.Equal(3, Samples(metrics, JobQueuesAge).Length);
            Assert.InRange(PrometheusText.Sum(metrics, JobQueuesAge, "reading=\"job-queues\""), 0, 1);
        });

        amqp.Cut();
        http.Cut();
        try
        {
            // Stale after five refresh periods (1 s) for the job queues, three (3 s) for the error queues.
            double ageDuringOutage = 0;
            await Eventually.AssertAsync(async () =>
            {
                var metrics = await MetricsAsync(api);
                Assert.Empty(Samples(metrics, "conveyor_queue_consumers"));
                Assert.Empty(Samples(metrics, "conveyor_queue_depth"));
                Assert.Empty(Samples(metrics, "conveyor_error_queue_depth"));
                ageDuringOutage = PrometheusText.Sum(metrics, JobQueuesAge, "reading=\"job-queues\"");
                Assert.True(ageDuringOutage > 1, $"job-queues reading age {ageDuringOutage}");
                Assert.True(PrometheusText.Sum(metrics, JobQueuesAge, "reading=\"error-queues\"") > 3);
            }, TimeSpan.FromSeconds(30));

            var (status, checks) = await ReadinessAsync(api);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            var check = checks.GetProperty("broker");
            Assert.Equal("Unhealthy", check.GetProperty("status").GetString());
            Assert.Contains("RabbitMQ has not answered", check.GetProperty("description").GetString(), StringComparison.Ordinal);

            // The age keeps growing while the outage lasts: what the alert watches.
            await Eventually.AssertAsync(async () =>
                Assert.True(PrometheusText.Sum(await MetricsAsync(api), JobQueuesAge, "reading=\"job-queues\"") > ageDuringOutage + 0.5));
        }
        finally
        {
            amqp.Restore();
            http.Restore();
        }

        await AssertReadyAsync(api);
        await Eventually.AssertAsync(async () =>
        {
            var metrics = await MetricsAsync(api);
            // At least this test's worker (a worker of an earlier test may not have left the vhost yet).
            Assert.True(PrometheusText.Sum(metrics, "conveyor_queue_consumers", $"queue=\"{JobKinds.ChargePayment}\"") >= 1, "no consumer reported");
            Assert.Equal(3, PrometheusText.Sum(metrics, "conveyor_error_queue_depth", "queue=\"charge-payment_error\""));
            Assert.InRange(PrometheusText.Sum(metrics, JobQueuesAge, "reading=\"job-queues\""), 0, 1);
        });
    }

    /// <summary>
    /// A replica that can no longer check for stranded jobs (management API or database out of its reach)
    /// exported the counts of its last check for as long as that lasted: under <c>max by (kind)</c> over
    /// the replicas, its stale count outvoted the others' fresh 0, and ConveyorJobsStranded kept firing
    /// after the jobs were published or cancelled. Like the queue figures, the gauge goes absent once the
    /// last check is three periods old. (No other Api runs here: every Api of the process would export it.)
    /// </summary>
    [Fact]
    public async Task An_Api_that_can_no_longer_check_for_stranded_jobs_stops_exporting_its_last_counts()
    {
        await using var management = await FakeRabbitManagement.StartAsync();
        management.Queues = [new() { ["name"] = JobKinds.ChargePayment, ["messages"] = 0, ["messages_ready"] = 0, ["messages_unacknowledged"] = 0, ["consumers"] = 1 }];
        var longAgo = DateTimeOffset.UtcNow.AddMinutes(-5);
        await using (var db = fixture.CreateDbContext())
        {
            // No stored request: the Api cannot publish them again, so they stay counted.
            db.Jobs.AddRange(Enumerable.Range(0, 2).Select(_ => new Job
            {
                Id = Guid.CreateVersion7(),
                Kind = JobKinds.ChargePayment,
                BusinessKey = Guid.NewGuid().ToString("D"),
                Status = JobStatus.Queued,
                CreatedAt = longAgo,
                UpdatedAt = longAgo,
            }));
            await db.SaveChangesAsync();
        }

        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Jobs:StrandedAfterSeconds"] = "60",
            ["Jobs:StrandedCheckSeconds"] = "1",
            ["RabbitMq:ManagementPort"] = management.Port.ToString(CultureInfo.InvariantCulture),
        });
        await Eventually.AssertAsync(async () =>
            Assert.Equal(2, PrometheusText.Sum(await MetricsAsync(api), "conveyor_jobs_stranded", $"kind=\"{JobKinds.ChargePayment}\"")));

        management.QueuesAnswer = """{"error":"not_authorised"}""";

        await Eventually.AssertAsync(async () => Assert.Empty(Samples(await MetricsAsync(api), "conveyor_jobs_stranded")), TimeSpan.FromSeconds(30));

        // Checking again, it exports them again.
        management.QueuesAnswer = null;
        await Eventually.AssertAsync(async () =>
            Assert.Equal(2, PrometheusText.Sum(await MetricsAsync(api), "conveyor_jobs_stranded", $"kind=\"{JobKinds.ChargePayment}\"")));
    }

    [Fact]
    public async Task An_Api_that_has_never_reached_the_broker_does_not_call_it_healthy()
    {
        // Refreshed once a minute, so the reading counts as fresh for five minutes after the start: an age
        // counted from the start of the process, before any reading, is still no answer from RabbitMQ.
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:Port"] = ClosedPort.Number.ToString(CultureInfo.InvariantCulture),
            ["RabbitMq:ConnectTimeoutSeconds"] = "2",
            ["Backpressure:RefreshMilliseconds"] = "60000",
        });

        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await ReadinessAsync(api);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            var check = checks.GetProperty("broker");
            Assert.True(check.GetProperty("status").GetString() == "Unhealthy", $"broker: {check}");
            // The first reading's failure, once it has failed: the cause, not a made-up answer.
            Assert.Contains("RabbitMQ has not answered since the Api started", check.GetProperty("description").GetString(), StringComparison.Ordinal);
            Assert.DoesNotContain("no reading yet", check.GetProperty("description").GetString(), StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task An_Api_that_cannot_read_the_broker_alarms_shows_it_in_their_reading_age()
    {
        // RabbitMQ refuses GET /api/nodes to a user without the monitoring tag: the Api then assumes no
        // alarm, and a publish during one waits out RabbitMq:ConnectTimeoutSeconds instead of a 503 at once.
        await using var management = await FakeRabbitManagement.StartAsync();
        management.NodesRefused = true;
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RabbitMq:ManagementPort"] = management.Port.ToString(CultureInfo.InvariantCulture),
            ["Backpressure:RefreshMilliseconds"] = "200",
        });

        // Not unready for it: submissions still go through, the broker answering their publishes.
        await AssertReadyAsync(api);
        await Eventually.AssertAsync(async () =>
        {
            var metrics = await MetricsAsync(api);
            Assert.InRange(PrometheusText.Sum(metrics, JobQueuesAge, "reading=\"job-queues\""), 0, 1);
            Assert.True(PrometheusText.Sum(metrics, JobQueuesAge, "reading=\"alarms\"") > 1, "the alarms' reading age did not grow");
        }, TimeSpan.FromSeconds(30));

        management.NodesRefused = false;
        await Eventually.AssertAsync(async () =>
            Assert.InRange(PrometheusText.Sum(await MetricsAsync(api), JobQueuesAge, "reading=\"alarms\""), 0, 1));
    }

    [Fact]
    public async Task A_worker_that_cannot_reach_the_broker_is_unready_until_it_can_again()
    {
        var broker = fixture.RabbitOptions();
        // A vhost of its own, deleted at the end: should this worker's bus outlive the test and reconnect
        // through another test's relay on a reused port, it finds no vhost instead of that test's queues.
        await using var scratch = await fixture.ScratchVhostAsync("unready-worker");
        await using var amqp = await OutageProxy.ToAsync(broker.Host, broker.Port);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("RabbitMq:VirtualHost", scratch.Name),
            ("RabbitMq:Port", amqp.Port.ToString(CultureInfo.InvariantCulture)),
            ("RabbitMq:ConnectTimeoutSeconds", "2")));

        amqp.Cut();
        try
        {
            // MassTransit says Degraded ("Degraded Endpoints: ..."), which by default would answer 200.
            await Eventually.AssertAsync(async () =>
            {
                var (status, checks) = await ReadinessAsync(worker);
                Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
                Assert.NotEqual("Healthy", checks.GetProperty("masstransit-bus").GetProperty("status").GetString());
                var consuming = checks.GetProperty("consuming");
                Assert.True("Unhealthy" == consuming.GetProperty("status").GetString(), checks.ToString());
                Assert.Contains("No receive endpoint consumes", consuming.GetProperty("description").GetString(), StringComparison.Ordinal);
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            amqp.Restore();
        }

        await worker.WaitUntilReadyAsync();
    }

    [Fact]
    public async Task A_worker_whose_kill_switch_paused_one_endpoint_stays_ready()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.FailEverythingWith = HttpStatusCode.ServiceUnavailable;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "60000"),
            ("Consumers:ChargePayment:KillSwitchActivationThreshold", "3"),
            ("Consumers:ChargePayment:KillSwitchTripPercent", "20"),
            ("Consumers:ChargePayment:KillSwitchRestartSeconds", "60")));
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            for (var i = 0; i < 10; i++)
            {
                await publisher.PublishAsync(new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-paused", AmountMinor = 100 + i, Currency = "EUR" });
            }
        }

        // Paused by design for a downstream outage; the pod still consumes its other queues.
        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await ReadinessAsync(worker);
            Assert.Equal("Degraded", checks.GetProperty("consuming").GetProperty("status").GetString());
            Assert.Contains(JobKinds.ChargePayment, checks.GetProperty("consuming").GetProperty("description").GetString(), StringComparison.Ordinal);
            Assert.True(HttpStatusCode.OK == status, checks.ToString());
        }, TimeSpan.FromSeconds(30));
    }

    /// <summary>Waits for readiness; says which check held it up if it does not come.</summary>
    private static Task AssertReadyAsync(RunningApp app) =>
        Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await ReadinessAsync(app);
            Assert.True(status == HttpStatusCode.OK, $"ready answered {(int)status}: {checks}");
        }, TimeSpan.FromSeconds(90));

    private static Task<string> MetricsAsync(RunningApp app) =>
        app.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));

    private static string[] Samples(string exposition, string name) =>
        [.. exposition.Split('\n').Where(line => line.StartsWith(name + "{", StringComparison.Ordinal))];

    internal static async Task<(HttpStatusCode Status, JsonElement Checks)> ReadinessAsync(RunningApp app)
    {
        using var response = await app.Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
        using var body = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        return (response.StatusCode, body.RootElement.GetProperty("checks").Clone());
    }
}
