using System.Diagnostics;
using MassTransit.Logging;
using MassTransit.Monitoring;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace Conveyor.ServiceDefaults;

public static class TelemetryExtensions
{
    /// <summary>
    /// Distinct tag sets kept per metric of the runtime, ASP.NET Core, HttpClient and MassTransit;
    /// more are counted in one series tagged <c>otel_metric_overflow="true"</c>. Each metric stream
    /// allocates room for its limit up front (~115 bytes a tag set), and the SDK's default of 2,000
    /// put ~11.5 MiB on the large-object heap of an idle worker for series that never exist: those
    /// metrics carry a few bounded tags (route, method, status, message type, endpoint). Conveyor's
    /// own meters keep the default, since their queue-named gauges get one series per queue.
    /// </summary>
    public const int LibraryCardinalityLimit = 500;

    /// <summary>
    /// Conveyor's own spans (an inbox batch: the database work several messages share, linked to each
    /// message's trace), traced with the libraries' whenever tracing is on.
    /// </summary>
    public const string ActivitySourceName = "Conveyor";

    /// <summary>
    /// Set on a request whose URL a span must name by its origin only: a webhook's URL comes from whoever
    /// published the command, and its path often holds the receiver's secret (chat services put their token
    /// there), which every trace exported to a collector would carry (HttpClient's span keeps the path, and
    /// hides only the query). The logs and the job's result name such a receiver by its origin too.
    /// </summary>
    public static readonly HttpRequestOptionsKey<bool> OriginOnlyInTraces = new("Conveyor.OriginOnlyInTraces");

    /// <summary>
    /// Traces (ASP.NET Core, HttpClient, MassTransit, Npgsql: one trace from the API request through
    /// the publish and the consume to the database and HTTP calls), metrics (MassTransit's meter,
    /// ours, runtime) and logs carrying the trace id. OTLP export follows the standard
    /// <c>OTEL_*</c> variables and is on when <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> is set; metrics
    /// are also scraped at <c>/metrics</c>. Traces are recorded only when something takes them: with
    /// an OTLP endpoint, or with <c>Telemetry:Tracing=true</c> (<c>false</c> turns them off even then);
    /// recording spans for every message, command and HTTP call with nowhere to send them cost
    /// CPU on every message (bench/analysis.md §1).
    /// </summary>
    public static IHostApplicationBuilder AddConveyorTelemetry(this IHostApplicationBuilder builder, string serviceName, params string[] meters)
    {
        builder.Logging.Configure(options =>
            options.ActivityTrackingOptions = ActivityTrackingOptions.TraceId | ActivityTrackingOptions.SpanId);
        builder.Logging.AddOpenTelemetry(logging =>
        {
            logging.IncludeScopes = true;
            logging.IncludeFormattedMessage = true;
        });

        var exporting = !string.IsNullOrWhiteSpace(builder.Configuration["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        var traced = bool.TryParse(builder.Configuration["Telemetry:Tracing"], out var tracingSetting) ? tracingSetting : exporting;
        var telemetry = builder.Services.AddOpenTelemetry()
            .ConfigureResource(resource => resource.AddService(serviceName));
        if (traced)
        {
            telemetry.WithTracing(tracing => tracing
                .AddSource(DiagnosticHeaders.DefaultListenerName, ActivitySourceName)
                .AddAspNetCoreInstrumentation(options =>
                    options.Filter = context => !context.Request.Path.StartsWithSegments("/health")
                        && !context.Request.Path.StartsWithSegments("/metrics"))
                .AddHttpClientInstrumentation(options => options.EnrichWithHttpRequestMessage = OriginOnly)
                .AddNpgsql());
        }

        var ownMeters = meters.ToHashSet(StringComparer.Ordinal);
        telemetry.WithMetrics(metrics => metrics
            .AddMeter(InstrumentationOptions.MeterName)
            .AddMeter(meters)
            .AddAspNetCoreInstrumentation()
            .AddHttpClientInstrumentation()
            .AddRuntimeInstrumentation()
            .AddView(instrument => ownMeters.Contains(instrument.Meter.Name)
                ? null
                : new MetricStreamConfiguration { CardinalityLimit = LibraryCardinalityLimit, TagKeys = KeptTags(instrument.Meter.Name) })
            .AddPrometheusExporter());

        if (exporting)
        {
            telemetry.UseOtlpExporter();
        }

        return builder;
    }

    /// <summary>
    /// The tags kept on HttpClient's and DNS's metrics, which otherwise name the remote host and the
    /// peer's address: a webhook's URL comes from whoever published the command, so each receiver host
    /// would add its own series (about 37 across those instruments) for the life of the process, name
    /// customers' hosts in the scrape, and, past the limit above, fold the payment gateway's series
    /// into the overflow. Null (every tag) for the other meters.
    /// </summary>
    private static string[]? KeptTags(string meterName) => meterName switch
    {
        "System.Net.Http" =>
        [
            "http.request.method", "http.response.status_code", "error.type", "network.protocol.version",
            "url.scheme", "http.connection.state",
        ],
        "System.Net.NameResolution" => ["error.type"],
        _ => null,
    };

    private static void OriginOnly(Activity activity, HttpRequestMessage request)
    {
        if (request.Options.TryGetValue(OriginOnlyInTraces, out var originOnly) && originOnly
            && request.RequestUri is { IsAbsoluteUri: true } url)
        {
            // Authority leaves out any user information; the path and query are marked as hidden, as HttpClient marks a query.
            activity.SetTag("url.full", $"{url.Scheme}://{url.Authority}/*");
        }
    }

    /// <summary>Prometheus scrape endpoint at <c>/metrics</c>.</summary>
    public static IEndpointRouteBuilder MapConveyorMetrics(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapPrometheusScrapingEndpoint("/metrics");
        return endpoints;
    }
}
