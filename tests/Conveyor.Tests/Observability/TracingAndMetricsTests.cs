using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using OpenTelemetry.Trace;

namespace Conveyor.Tests.Observability;

[Collection(AloneCollection.Name)]
public sealed class TracingAndMetricsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private static readonly string[] Signals = ["TRACES", "METRICS", "LOGS"];

    private static readonly string[] WorkerHistograms = ["conveyor_jobs_duration_seconds_bucket{", "conveyor_jobs_wait_seconds_bucket{"];

    private readonly List<Activity> _apiActivities = [];
    private readonly List<Activity> _workerActivities = [];
    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
        // No OTLP endpoint here: tracing is switched on explicitly, as for any other exporter.
        var workerSettings = WorkerSettings.With(_gateway);
        workerSettings["Telemetry:Tracing"] = "true";
        _worker = await fixture.StartWorkerAsync(workerSettings, Export(_workerActivities));
        _api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Telemetry:Tracing"] = "true" }, Export(_apiActivities));
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        await _worker.DisposeAsync();
        await _gateway.DisposeAsync();
    }

    [Fact]
    public async Task One_trace_spans_the_api_request_the_publish_the_consume_the_database_and_the_gateway_call()
    {
        var paymentId = Guid.NewGuid();
        using var response = await _api.Client.PostAsJsonAsync("/api/jobs/charge-payment",
            new { paymentId, accountId = "acct-trace", amountMinor = 321, currency = "EUR" });
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var jobId = (await response.Content.ReadFromJsonAsync<JsonElement>()).GetProperty("jobId").GetGuid();

        await Eventually.AssertAsync(async () =>
        {
            var job = await _api.Client.GetFromJsonAsync<JsonElement>($"/api/jobs/{jobId}");
            Assert.Equal("succeeded", job.GetProperty("status").GetString());
        });

        await Eventually.AssertAsync(() =>
        {
            var request = Snapshot(_apiActivities).Single(a => a.Kind == ActivityKind.Server
                && a.GetTagItem("http.request.method") as string == "POST"
                && (a.GetTagItem("url.path") as string ?? "").EndsWith("/api/jobs/charge-payment", StringComparison.Ordinal));
            var trace = request.TraceId;
            var worker = Snapshot(_workerActivities).Where(a => a.TraceId == trace).ToList();
            Assert.Contains(worker, a => a.Kind == ActivityKind.Consumer && a.Source.Name == "MassTransit");
            // The inbox's database work is shared by the messages of a batch: it runs under a batch span of
            // its own, linked to this consume, with the database commands beneath it.
            var batch = Assert.Single(Snapshot(_workerActivities), a => a.Source.Name == "Conveyor" && a.DisplayName == "inbox batch"
                && a.Links.Any(l => l.Context.TraceId == trace));
            Assert.Contains(Snapshot(_workerActivities), a => a.Kind == ActivityKind.Client && a.Source.Name.Contains("Npgsql", StringComparison.Ordinal)
                && a.TraceId == batch.TraceId && a.ParentSpanId == batch.SpanId);
            Assert.Contains(worker, a => a.Kind == ActivityKind.Client
                && (a.GetTagItem("url.full") as string ?? "").StartsWith(_gateway.BaseAddress.ToString(), StringComparison.Ordinal));
            Assert.Contains(Snapshot(_apiActivities), a => a.TraceId == trace && a.Kind == ActivityKind.Producer);
        });
    }

    /// <summary>
    /// Before any job ran, the worker's scrape already has every kind's job counters at 0: the alert rules divide and
    /// rate them by kind, and a series that first appears with its first count is invisible to both
    /// (<c>Deploy/AlertSeriesTests</c> checks the rules read these).
    /// </summary>
    [Fact]
    public async Task A_worker_exports_every_kinds_job_counters_at_zero_before_any_job()
    {
        var text = await _worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));

        foreach (var counter in new[] { "conveyor_jobs_succeeded_total", "conveyor_jobs_attempts_failed_total", "conveyor_jobs_dead_lettered_total", "conveyor_jobs_retries_scheduled_total" })
        {
            foreach (var kind in JobKinds.All)
            {
                Assert.True(PrometheusText.Samples(text, counter, $"kind=\"{kind}\"").Count > 0, $"{counter}{{kind=\"{kind}\"}} is not exported");
                Assert.Equal(0, PrometheusText.Sum(text, counter, $"kind=\"{kind}\""));
            }
        }
    }

    /// <summary>
    /// The OpenTelemetry specification lets each signal name its own OTLP endpoint
    /// (<c>OTEL_EXPORTER_OTLP_TRACES_ENDPOINT</c>, <c>_METRICS_</c>, <c>_LOGS_</c>) with no general
    /// <c>OTEL_EXPORTER_OTLP_ENDPOINT</c>: each signal is then exported there, to the URL as given, where the general
    /// endpoint gets the signal's <c>v1/...</c> path appended. Only the general endpoint switched export on, so with the
    /// signals' own nothing was exported. The host is stopped before the check: stopping flushes each exporter, so
    /// nothing waits on an export period.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Each_signal_is_exported_over_otlp_when_the_general_endpoint_or_its_own_is_set(bool ownEndpoints)
    {
        await using var collector = await FakeOtlpCollector.StartAsync();
        var settings = new Dictionary<string, string?> { ["Logging:LogLevel:Default"] = "Information" };
        if (ownEndpoints)
        {
            foreach (var signal in Signals)
            {
                settings[$"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"] = collector.Url($"/collector/{signal.ToLowerInvariant()}");
                settings[$"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"] = "http/protobuf";
            }
        }
        else
        {
            settings["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.Url("/collector/");
            settings["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf";
        }

        var api = await fixture.StartApiAsync(settings);
        try
        {
            using var response = await api.Client.GetAsync(new Uri("/api/jobs", UriKind.Relative));
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }
        finally
        {
            await api.DisposeAsync();
        }

        string[] expected = ownEndpoints
            ? ["/collector/logs", "/collector/metrics", "/collector/traces"]
            : ["/collector/v1/logs", "/collector/v1/metrics", "/collector/v1/traces"];
        Assert.Equal(expected, collector.Paths.Distinct().Order(StringComparer.Ordinal));
    }

    /// <summary>
    /// A job submitted with <c>runAt</c> is published later by a worker's dispatcher, not by the request: its
    /// consume still belongs to the trace of the request that submitted it, as a job published at once does.
    /// </summary>
    [Fact]
    public async Task A_scheduled_jobs_consume_belongs_to_the_trace_of_the_request_that_submitted_it()
    {
        // Due in an hour, then made due: due a second on, a request that took that long to arrive (a busy
        // machine) would carry a past runAt and be refused.
        var accepted = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)));
        await fixture.MakeScheduledMessagesDueAsync();
        await Eventually.AssertAsync(async () =>
        {
            var job = await _api.Client.GetJobAsync(accepted.JobId);
            Assert.Equal(JobStatus.Succeeded, job.Status);
        });

        await Eventually.AssertAsync(() =>
        {
            var request = Snapshot(_apiActivities).Single(a => a.Kind == ActivityKind.Server
                && a.GetTagItem("http.request.method") as string == "POST"
                && (a.GetTagItem("url.path") as string ?? "").EndsWith("/api/jobs/charge-payment", StringComparison.Ordinal));
            Assert.Contains(Snapshot(_workerActivities), a => a.Kind == ActivityKind.Consumer && a.Source.Name == "MassTransit"
                && a.TraceId == request.TraceId);
            return Task.CompletedTask;
        });
    }

    [Fact]
    public async Task Metrics_endpoints_expose_job_inbox_and_masstransit_metrics_after_a_run()
    {
        for (var i = 0; i < 3; i++)
        {
            using var response = await _api.Client.PostAsJsonAsync("/api/jobs/charge-payment",
                new { paymentId = Guid.NewGuid(), accountId = "acct-metrics", amountMinor = 100 + i, currency = "EUR" });
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }

        await Eventually.AssertAsync(async () =>
        {
            var text = await _worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
            Assert.True(PrometheusText.Sum(text, "conveyor_jobs_succeeded_total", "kind=\"charge-payment\"") >= 3, "jobs succeeded");
            Assert.Contains("conveyor_jobs_duration_seconds_bucket", text, StringComparison.Ordinal);
            // Second-scale buckets, not OpenTelemetry's millisecond-made defaults (0, 5, 10, ...: every job under 5 s in one).
            foreach (var histogram in WorkerHistograms)
            {
                Assert.Contains(text.Split('\n'), line => line.StartsWith(histogram, StringComparison.Ordinal)
                    && line.Contains("kind=\"charge-payment\"", StringComparison.Ordinal) && line.Contains("le=\"0.05\"", StringComparison.Ordinal));
            }

            // Every attempt records how long its command waited in the queue.
            Assert.True(PrometheusText.Sum(text, "conveyor_jobs_wait_seconds_count", "kind=\"charge-payment\"") >= 3, "waits recorded");
            Assert.Matches("(dotnet|process_runtime_dotnet)_gc_collections", text);
        });
        var api = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Contains("http_server_request_duration_seconds_bucket", api, StringComparison.Ordinal);
        // Each accepted submission waited once for its row's commit and once for its command's confirm.
        Assert.Equal(3, PrometheusText.Sum(api, "conveyor_api_submission_duration_seconds_count", "phase=\"row\"", "outcome=\"inserted\""));
        Assert.Equal(3, PrometheusText.Sum(api, "conveyor_api_submission_duration_seconds_count", "phase=\"publish\"", "outcome=\"confirmed\""));
        // Buckets from 1 ms up, not OpenTelemetry's defaults (0, 5, 10, 25, ..., made for milliseconds: every submission would fall in the first).
        Assert.Contains(api.Split('\n'), line => line.StartsWith("conveyor_api_submission_duration_seconds_bucket{", StringComparison.Ordinal)
            && line.Contains("phase=\"publish\"", StringComparison.Ordinal) && line.Contains("le=\"0.005\"", StringComparison.Ordinal));
        // MassTransit's meter (messaging_masstransit_*) is registered too, but MassTransit binds it
        // once per process to the first host's meter factory, so it cannot be asserted on hosts that
        // tests start and stop in one process.
    }

    private static Action<WebApplicationBuilder> Export(List<Activity> into)
    {
        ProcessWide.Observe("OpenTelemetry's spans");
        return builder => builder.Services.ConfigureOpenTelemetryTracerProvider(tracing => tracing.AddInMemoryExporter(into));
    }

    private static List<Activity> Snapshot(List<Activity> activities)
    {
        lock (activities)
        {
            return [.. activities];
        }
    }
}
