using System.Diagnostics;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using OpenTelemetry.Trace;

namespace Conveyor.Tests.Observability;

/// <summary>
/// A job submitted with <c>runAt</c> is published later by a worker's dispatcher, not by the request: its
/// consume still belongs to the trace of the request that submitted it, as a job published at once does.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class ScheduledJobTraceTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private readonly List<Activity> _apiActivities = [];
    private readonly List<Activity> _workerActivities = [];
    private FakePaymentGateway _gateway = null!;
    private RunningApp _worker = null!;
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _gateway = await FakePaymentGateway.StartAsync();
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
    public async Task A_scheduled_jobs_consume_belongs_to_the_trace_of_the_request_that_submitted_it()
    {
        var accepted = await _api.Client.AcceptJobAsync(JobKinds.ChargePayment,
            JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddSeconds(1)));
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
