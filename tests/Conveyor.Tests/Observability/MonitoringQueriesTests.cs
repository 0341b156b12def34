using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Deploy;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Observability;

/// <summary>
/// Every Conveyor metric that the alert rules and the Grafana dashboard (<c>deploy/monitoring</c>)
/// query, and that its README lists, is one the Api or the worker exposes at <c>/metrics</c>, under
/// that exact name, once the events it counts have happened: a renamed instrument or a typo in a
/// query fails here, not in production when the alert should have fired.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed partial class MonitoringQueriesTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private static readonly string[] HistogramSeries = ["_bucket", "_count", "_sum"];

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Every_conveyor_metric_the_alerts_the_dashboard_and_the_readme_name_is_exposed()
    {
        var queried = QueriedMetrics();
        Assert.True(queried.Count >= 8, $"found only {queried.Count} Conveyor metrics in deploy/monitoring: {string.Join(", ", queried)}");

        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        var holdWebhooks = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        receiver.HoldDeliveries = holdWebhooks.Task;
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Webhooks:MaxConcurrentPerOrigin", "1"),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "1"),
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "300"),
            ("Redelivery:BacklogRefreshSeconds", "1")));
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["ErrorQueues:DepthRefreshSeconds"] = "1", ["Jobs:StrandedCheckSeconds"] = "1" });

        // A transient failure, redelivered, then a success; a permanent failure; a duplicate; a conflict (ADR 0011).
        gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
        var retried = await SubmitAsync(api);
        await fixture.WaitForJobAsync(retried, JobStatus.Succeeded);
        gateway.FailNext(1, HttpStatusCode.BadRequest);
        var refused = await SubmitAsync(api);
        await fixture.WaitForJobAsync(refused, JobStatus.DeadLettered);
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(new ChargePayment { PaymentId = retried, AccountId = "acct-monitoring", AmountMinor = 500, Currency = "EUR" });
            await publisher.PublishAsync(new ChargePayment { PaymentId = retried, AccountId = "acct-monitoring", AmountMinor = 501, Currency = "EUR" });
        }

        // Two webhooks to one receiver, which holds the first: the second is set aside for its origin's limit.
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            foreach (var n in new[] { 1, 2 })
            {
                await publisher.PublishAsync(new DeliverWebhook
                {
                    WebhookId = Guid.NewGuid(), Url = receiver.Url(), EventType = "invoice.created", Payload = JsonDocument.Parse($$"""{"invoice":{{n}}}""").RootElement,
                });
            }
        }

        await Eventually.AssertAsync(async () => Assert.Contains(
            "conveyor_webhooks_set_aside_total", await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative)), StringComparison.Ordinal));
        // The first may still be on its way to the receiver when the second is set aside.
        await Eventually.AssertAsync(() => Assert.Single(receiver.Deliveries));
        holdWebhooks.SetResult();

        // The session holding the worker's origin slots ended by the server: the next delivery goes by the worker's own
        // count (conveyor_webhooks_admitted_locally_total); the second webhook, back from aside, may be it.
        await EndOriginSlotSessionAsync();
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(new DeliverWebhook
            {
                WebhookId = Guid.NewGuid(), Url = receiver.Url(), EventType = "invoice.created", Payload = JsonDocument.Parse("""{"invoice":3}""").RootElement,
            });
        }

        await Eventually.AssertAsync(() => Assert.Equal(3, receiver.Deliveries.Count));

        // A batch of two.
        using (var batch = await api.Client.PostAsJsonAsync("/api/jobs/charge-payment/batch", new
        {
            jobs = new[] { Guid.NewGuid(), Guid.NewGuid() }.Select(paymentId => new { paymentId, accountId = "acct-monitoring", amountMinor = 500, currency = "EUR" }),
        }))
        {
            Assert.Equal(HttpStatusCode.Accepted, batch.StatusCode);
        }

        // A stranded job (queued long ago, its command never published), which the Api publishes again.
        var stranded = Guid.NewGuid();
        await using (var db = fixture.CreateDbContext())
        {
            var longAgo = DateTimeOffset.UtcNow.AddHours(-1);
            db.Jobs.Add(new Job
            {
                Id = Guid.CreateVersion7(),
                Kind = "charge-payment",
                BusinessKey = stranded.ToString(),
                Status = JobStatus.Queued,
                RequestBody = JsonSerializer.SerializeToUtf8Bytes(new { paymentId = stranded, accountId = "acct-monitoring", amountMinor = 500, currency = "EUR" }),
                CreatedAt = longAgo,
                UpdatedAt = longAgo,
            });
            await db.SaveChangesAsync();
        }

        await fixture.WaitForJobAsync(stranded, JobStatus.Succeeded);

        await Eventually.AssertAsync(async () =>
        {
            var exposed = Families(await api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative)))
                .Concat(Families(await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative))))
                .ToHashSet(StringComparer.Ordinal);
            var missing = queried.Where(name => !exposed.Contains(name)
                && !HistogramSeries.Any(series => name.EndsWith(series, StringComparison.Ordinal) && exposed.Contains(name[..^series.Length]))).ToList();
            Assert.True(missing.Count == 0,
                $"queried in deploy/monitoring but not exposed: {string.Join(", ", missing)}; exposed: {string.Join(", ", exposed.Where(n => n.StartsWith("conveyor_", StringComparison.Ordinal)).Order())}");
        });
    }

    /// <summary>
    /// <c>ConveyorWorkersAbsent</c> watches a series every running worker exports from its start, so a worker that started
    /// while PostgreSQL was out of reach (running, scraped, consuming nothing) is not reported absent: its alert is about
    /// workers nobody scrapes. It watched <c>conveyor_redelivery_overdue_seconds</c>, which a worker exports only once it
    /// has read the database. The Api must not export that series, or no worker at all would still look present.
    /// </summary>
    [Fact]
    public async Task A_worker_started_while_the_database_is_out_of_reach_still_exports_the_series_the_absent_alert_watches()
    {
        var series = WorkersAbsentSeries().Match(File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "alerts.yaml")));
        Assert.True(series.Success, "no absent(...) expression for ConveyorWorkersAbsent in alerts.yaml");
        var unreachable = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Port = ClosedPort.Number };
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in WorkerSettings.With().Override(("ConnectionStrings:Conveyor", unreachable.ConnectionString)))
        {
            settings[key] = value;
        }

        // Not fixture.StartWorkerAsync: that waits for /health/ready, which a worker without its database never gives.
        await using var worker = await RunningApp.StartAsync(args => WorkerApp.Build(args), settings);
        await using var api = await fixture.StartApiAsync();
        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(worker);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            Assert.Equal("Unhealthy", checks.GetProperty("database").GetProperty("status").GetString());
        });

        var name = series.Groups["series"].Value;
        Assert.Contains(name, Families(await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative))));
        Assert.DoesNotContain(name, Families(await api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative))));
    }

    /// <summary>
    /// <c>ConveyorScheduledMessagesOverdue</c> cannot fire while no worker can read <c>scheduled_messages</c>: a worker
    /// that cannot read it stops exporting the gauge that alert watches (rather than its last value, which fired the
    /// alert or kept it silent on a stale reading). <c>ConveyorScheduledMessagesUnread</c> covers that: it fires on the
    /// age of the freshest reading once no worker exports the gauge. Here a worker cut off from PostgreSQL, scraped as
    /// Prometheus scrapes it: the gauge goes, the age stays and grows.
    /// </summary>
    [Fact]
    public async Task A_worker_cut_off_from_the_database_exports_the_reading_age_the_unread_alert_watches_and_no_stale_overdue_gauge()
    {
        var alerts = File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "alerts.yaml"));
        var unread = ScheduledMessagesUnreadQuery().Match(alerts);
        Assert.True(unread.Success, "no 'min(<age>) and on() absent(<gauge>)' expression for ConveyorScheduledMessagesUnread in alerts.yaml");
        var overdue = ScheduledMessagesOverdueQuery().Match(alerts);
        Assert.True(overdue.Success, "no 'max(<gauge>) > ...' expression for ConveyorScheduledMessagesOverdue in alerts.yaml");
        var (age, gauge) = (unread.Groups["age"].Value, unread.Groups["gauge"].Value);
        Assert.Equal(overdue.Groups["series"].Value, gauge);

        var server = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var proxy = await OutageProxy.ToAsync(server.Host!, server.Port);
        var viaProxy = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Host = "127.0.0.1", Port = proxy.Port };
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("ConnectionStrings:Conveyor", viaProxy.ConnectionString),
            ("Redelivery:BacklogRefreshSeconds", "1")));
        await Eventually.AssertAsync(async () => Assert.Equal(0, Assert.Single(Samples(await MetricsAsync(worker), gauge))));

        proxy.Cut();
        try
        {
            await Eventually.AssertAsync(async () =>
            {
                var exposition = await MetricsAsync(worker);
                Assert.Empty(Samples(exposition, gauge));
                var readAge = Assert.Single(Samples(exposition, age));
                Assert.True(readAge >= 3, $"{age} is {readAge}");
            });
        }
        finally
        {
            proxy.Restore();
        }
    }

    /// <summary>
    /// <c>ConveyorWorkerDatabaseUnreachable</c>: a worker running and scraped that cannot reach PostgreSQL for minutes
    /// consumes nothing and publishes no scheduled message, and <c>ConveyorWorkersAbsent</c> cannot see it (the worker
    /// exports its series); only its <c>/health/ready</c> said so. The series the alert watches counts from the
    /// worker's start while it has had no answer, falls back under the alert's threshold once PostgreSQL answers, and
    /// grows again from that answer when it goes away.
    /// </summary>
    [Fact]
    public async Task A_worker_that_cannot_reach_the_database_exports_the_growing_age_of_its_last_answer_that_the_unreachable_alert_watches()
    {
        var query = DatabaseUnreachableQuery().Match(File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "alerts.yaml")));
        Assert.True(query.Success, "no 'max(<series>) > <seconds>' expression for ConveyorWorkerDatabaseUnreachable in alerts.yaml");
        var series = query.Groups["series"].Value;
        var threshold = double.Parse(query.Groups["threshold"].Value, CultureInfo.InvariantCulture);

        var server = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var proxy = await OutageProxy.ToAsync(server.Host!, server.Port);
        var viaProxy = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Host = "127.0.0.1", Port = proxy.Port };
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in WorkerSettings.With().Override(("ConnectionStrings:Conveyor", viaProxy.ConnectionString)))
        {
            settings[key] = value;
        }

        // Started while PostgreSQL is out of reach (not fixture.StartWorkerAsync: it waits for /health/ready).
        proxy.Cut();
        await using var worker = await RunningApp.StartAsync(args => WorkerApp.Build(args), settings);
        var neverReached = 0.0;
        await Eventually.AssertAsync(async () => neverReached = Assert.Single(Samples(await MetricsAsync(worker), series)));
        await Eventually.AssertAsync(async () =>
        {
            var age = Assert.Single(Samples(await MetricsAsync(worker), series));
            Assert.True(age >= neverReached + 2, $"{series} is {age}, was {neverReached}");
        });
        Assert.Empty(Samples(await MetricsAsync(worker), "conveyor_redelivery_overdue_seconds"));

        // PostgreSQL answers: the alert's query stays quiet.
        var outage = Assert.Single(Samples(await MetricsAsync(worker), series));
        proxy.Restore();
        await Eventually.AssertAsync(async () =>
        {
            var age = Assert.Single(Samples(await MetricsAsync(worker), series));
            Assert.True(age < outage && age < threshold, $"{series} is {age}, was {outage} in the outage");
        });

        // Away again: counted from the last answer, not reset by each failed try.
        proxy.Cut();
        try
        {
            await Eventually.AssertAsync(async () =>
            {
                var age = Assert.Single(Samples(await MetricsAsync(worker), series));
                Assert.True(age >= 15, $"{series} is {age}");
            });
        }
        finally
        {
            proxy.Restore();
        }
    }

    /// <summary>Ends, from the server, the worker's session that holds its webhook origin slots.</summary>
    private async Task EndOriginSlotSessionAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("""
            SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'conveyor-worker-webhook-origins'
            """, connection);
        Assert.Equal(1L, await command.ExecuteScalarAsync());
    }

    /// <summary>The <c>conveyor_*</c> names in the alert rules' and the dashboard's queries and in the README's table.</summary>
    private static SortedSet<string> QueriedMetrics()
    {
        var text = File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "alerts.yaml"))
            + File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "grafana-dashboard.json"))
            + File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "README.md"));
        return new SortedSet<string>(MetricName().Matches(text).Select(m => m.Value), StringComparer.Ordinal);
    }

    /// <summary>Metric families in a Prometheus exposition, from its <c># TYPE</c> lines.</summary>
    private static IEnumerable<string> Families(string exposition) =>
        exposition.Split('\n')
            .Where(line => line.StartsWith("# TYPE ", StringComparison.Ordinal))
            .Select(line => line.Split(' ')[2]);

    private static Task<string> MetricsAsync(RunningApp app) => app.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));

    /// <summary>The values of <paramref name="name"/>'s samples in a Prometheus exposition, with or without labels.</summary>
    private static List<double> Samples(string exposition, string name) =>
        [.. exposition.Split('\n')
            .Where(line => line.StartsWith(name + " ", StringComparison.Ordinal) || line.StartsWith(name + "{", StringComparison.Ordinal))
            .Select(line => double.Parse(line[(line.LastIndexOf('}') is var brace and >= 0 ? brace + 1 : name.Length)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture))];

    private static async Task<Guid> SubmitAsync(RunningApp api)
    {
        var paymentId = Guid.NewGuid();
        using var response = await api.Client.PostAsJsonAsync("/api/jobs/charge-payment",
            new { paymentId, accountId = "acct-monitoring", amountMinor = 500, currency = "EUR" });
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        return paymentId;
    }

    [GeneratedRegex(@"alert: ConveyorWorkersAbsent\s+expr: absent\((?<series>[a-z0-9_]+)\)")]
    private static partial Regex WorkersAbsentSeries();

    [GeneratedRegex(@"alert: ConveyorScheduledMessagesUnread\s+expr: min\((?<age>[a-z0-9_]+)\) and on\(\) absent\((?<gauge>[a-z0-9_]+)\)")]
    private static partial Regex ScheduledMessagesUnreadQuery();

    [GeneratedRegex(@"alert: ConveyorScheduledMessagesOverdue\s+expr: max\((?<series>[a-z0-9_]+)\) > ")]
    private static partial Regex ScheduledMessagesOverdueQuery();

    [GeneratedRegex(@"alert: ConveyorWorkerDatabaseUnreachable\s+expr: max\((?<series>[a-z0-9_]+)\) > (?<threshold>[0-9]+)")]
    private static partial Regex DatabaseUnreachableQuery();

    [GeneratedRegex("conveyor_[a-z0-9_]+")]
    private static partial Regex MetricName();
}
