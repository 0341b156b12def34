using System.Diagnostics.Metrics;
using System.Globalization;
using Conveyor.ServiceDefaults;
using Conveyor.Tests.Infrastructure;
using MassTransit.Monitoring;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Observability;

/// <summary>
/// The services' metrics keep the SDK's 2,000 tag sets per metric for Conveyor's own meters (gauges
/// with one series per queue) and a smaller limit for the libraries' (bench/analysis.md §5: the
/// default's preallocated room was ~11.5 MiB of an idle worker). Scraped from the real /metrics.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class MetricCardinalityTests
{
    private const string OwnMeter = "Conveyor.CardinalityTest";
    private const int TagSets = TelemetryExtensions.LibraryCardinalityLimit + 100;

    [Fact]
    public async Task Own_meters_keep_every_series_and_library_meters_fold_the_excess_into_one_overflow_series()
    {
        await using var app = await RunningApp.StartAsync(args =>
        {
            var builder = WebApplication.CreateSlimBuilder(args);
            builder.Logging.ClearProviders();
            builder.AddConveyorTelemetry("cardinality-test", OwnMeter);
            var web = builder.Build();
            web.MapConveyorMetrics();
            return web;
        }, new Dictionary<string, string?>());

        // Instruments are matched when created, so after the meter provider exists.
        using var own = new Meter(OwnMeter);
        using var library = new Meter(InstrumentationOptions.MeterName);
        var ownCounter = own.CreateCounter<long>("cardinality_test_own");
        var libraryCounter = library.CreateCounter<long>("cardinality_test_library");
        for (var i = 0; i < TagSets; i++)
        {
            var tag = new KeyValuePair<string, object?>("queue", "q" + i.ToString(CultureInfo.InvariantCulture));
            ownCounter.Add(1, tag);
            libraryCounter.Add(1, tag);
        }

        var exposition = await app.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));

        var ownSeries = PrometheusText.Samples(exposition, "cardinality_test_own_total");
        Assert.Equal(TagSets, ownSeries.Count);
        Assert.DoesNotContain(ownSeries, line => line.Contains("otel_metric_overflow", StringComparison.Ordinal));

        var librarySeries = PrometheusText.Samples(exposition, "cardinality_test_library_total");
        var overflow = Assert.Single(librarySeries, line => line.Contains("otel_metric_overflow=\"true\"", StringComparison.Ordinal));
        Assert.InRange(librarySeries.Count - 1, TelemetryExtensions.LibraryCardinalityLimit - 1, TelemetryExtensions.LibraryCardinalityLimit);
        // Nothing is lost: the overflow series counts what the others do not.
        Assert.Equal(TagSets, PrometheusText.Sum(exposition, "cardinality_test_library_total"));
        Assert.Equal(TagSets - (librarySeries.Count - 1), PrometheusText.Sum(overflow, "cardinality_test_library_total"));
    }

    [Fact]
    public async Task HttpClient_and_DNS_metrics_do_not_name_the_hosts_called()
    {
        await using var app = await RunningApp.StartAsync(args =>
        {
            var builder = WebApplication.CreateSlimBuilder(args);
            builder.Logging.ClearProviders();
            builder.AddConveyorTelemetry("host-tags-test");
            var web = builder.Build();
            web.MapConveyorMetrics();
            return web;
        }, new Dictionary<string, string?>());

        // Two names of one host, as a webhook's URL can name any host: one by address, one looked up.
        var port = app.Client.BaseAddress!.Port;
        using var client = new HttpClient();
        foreach (var host in new[] { "127.0.0.1", "localhost" })
        {
            using var answer = await client.GetAsync(new Uri($"http://{host}:{port}/metrics"));
            Assert.Equal(System.Net.HttpStatusCode.OK, answer.StatusCode);
        }

        // The exporter answers a scrape from its cache for a moment: the calls above were scrapes too.
        var exposition = string.Empty;
        await Eventually.AssertAsync(async () =>
        {
            exposition = await app.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
            Assert.True(PrometheusText.Sum(exposition, "http_client_request_duration_seconds_count") >= 2);
            Assert.NotEmpty(PrometheusText.Samples(exposition, "dns_lookup_duration_seconds_count"));
        });
        var lines = exposition.Split('\n').Where(line => line.StartsWith("http_client_", StringComparison.Ordinal) || line.StartsWith("dns_", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(lines);
        Assert.DoesNotContain(lines, line => line.Contains("server_address", StringComparison.Ordinal)
            || line.Contains("network_peer_address", StringComparison.Ordinal)
            || line.Contains("dns_question_name", StringComparison.Ordinal)
            || line.Contains("localhost", StringComparison.Ordinal));
    }
}
