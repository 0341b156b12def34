using System.Diagnostics;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using OpenTelemetry.Trace;

namespace Conveyor.Tests.Observability;

/// <summary>
/// A webhook's URL comes from whoever published the command, and its path often holds the receiver's secret
/// (chat services put their token there): the spans the worker exports name the receiver by its origin only,
/// as its logs and the job's result do.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class WebhookTraceTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string SecretPath = "/services/T0001/B0002/s3cr3t-in-the-path";

    private readonly List<Activity> _workerActivities = [];
    private FakeWebhookReceiver _receiver = null!;
    private RunningApp _worker = null!;
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _receiver = await FakeWebhookReceiver.StartAsync();
        var workerSettings = WorkerSettings.With();
        workerSettings["Telemetry:Tracing"] = "true";
        ProcessWide.Observe("OpenTelemetry's spans");
        _worker = await fixture.StartWorkerAsync(workerSettings,
            builder => builder.Services.ConfigureOpenTelemetryTracerProvider(tracing => tracing.AddInMemoryExporter(_workerActivities)));
        _api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Webhooks:AllowPrivateNetworks"] = "true" });
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        await _worker.DisposeAsync();
        await _receiver.DisposeAsync();
    }

    [Fact]
    public async Task The_delivery_span_names_the_receivers_origin_not_the_path_of_its_url()
    {
        var accepted = await _api.Client.AcceptJobAsync(JobKinds.DeliverWebhook, JsonSerializer.Serialize(new
        {
            webhookId = Guid.NewGuid(),
            url = _receiver.Url(SecretPath).ToString(),
            eventType = "order.paid",
            payload = new { orderId = 7 },
        }));
        await Eventually.AssertAsync(async () =>
            Assert.Equal(JobStatus.Succeeded, (await _api.Client.GetJobAsync(accepted.JobId)).Status));

        await Eventually.AssertAsync(() =>
        {
            List<Activity> spans;
            lock (_workerActivities)
            {
                spans = [.. _workerActivities];
            }

            var delivery = Assert.Single(spans, a => a.Kind == ActivityKind.Client
                && a.GetTagItem("server.port") is int port && port == _receiver.BaseAddress.Port);
            Assert.StartsWith(_receiver.BaseAddress.GetLeftPart(UriPartial.Authority), delivery.GetTagItem("url.full") as string, StringComparison.Ordinal);
            // The fake receiver serves its request in this process: its own server span is the receiver's, not Conveyor's.
            var leaks = spans.Where(a => a.Kind != ActivityKind.Server)
                .SelectMany(a => a.TagObjects.Select(t => (Span: a.DisplayName, t.Key, Value: t.Value?.ToString() ?? "")).Append((Span: a.DisplayName, Key: "name", Value: a.DisplayName)))
                .Where(t => t.Value.Contains("s3cr3t", StringComparison.Ordinal))
                .ToList();
            Assert.True(leaks.Count == 0, string.Join("; ", leaks));
            return Task.CompletedTask;
        });
    }
}
