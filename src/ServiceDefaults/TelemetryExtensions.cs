using System.Diagnostics;
using System.Globalization;
using MassTransit.Logging;
using MassTransit.Monitoring;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;
using OpenTelemetry.Exporter;
using OpenTelemetry.Logs;
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

    /// <summary>The signals' names in their <c>OTEL_EXPORTER_OTLP_{SIGNAL}_*</c> variables.</summary>
    private const string TracesSignal = "TRACES";
    private const string MetricsSignal = "METRICS";
    private const string LogsSignal = "LOGS";

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
    /// <c>OTEL_*</c> variables, per signal: traces, metrics and logs are each exported when
    /// <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> or the signal's own endpoint (<c>OTEL_EXPORTER_OTLP_TRACES_ENDPOINT</c>,
    /// <c>_METRICS_ENDPOINT</c>, <c>_LOGS_ENDPOINT</c>) is set, the latter used as given, as the specification says
    /// (<see cref="ApplySignalSettings"/>); metrics
    /// are also scraped at <c>/metrics</c>. Traces are recorded only when something takes them: with
    /// an OTLP endpoint for traces, or with <c>Telemetry:Tracing=true</c> (<c>false</c> turns them off even then);
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

        var configuration = builder.Configuration;
        var exportingTraces = ExportsSignal(configuration, TracesSignal);
        var traced = bool.TryParse(configuration["Telemetry:Tracing"], out var tracingSetting) ? tracingSetting : exportingTraces;
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
            if (exportingTraces)
            {
                telemetry.WithTracing(tracing => tracing.AddOtlpExporter(options => ApplySignalSettings(options, configuration, TracesSignal)));
            }
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

        if (ExportsSignal(configuration, MetricsSignal))
        {
            telemetry.WithMetrics(metrics => metrics.AddOtlpExporter(options => ApplySignalSettings(options, configuration, MetricsSignal)));
        }

        if (ExportsSignal(configuration, LogsSignal))
        {
            telemetry.WithLogging(logging => logging.AddOtlpExporter(options => ApplySignalSettings(options, configuration, LogsSignal)));
        }

        return builder;
    }

    /// <summary>Whether <paramref name="signal"/> goes to an OTLP collector: the general endpoint or its own is set.</summary>
    private static bool ExportsSignal(IConfiguration configuration, string signal) =>
        !string.IsNullOrWhiteSpace(configuration["OTEL_EXPORTER_OTLP_ENDPOINT"])
        || !string.IsNullOrWhiteSpace(configuration[$"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"]);

    /// <summary>
    /// The signal's own <c>OTEL_EXPORTER_OTLP_{SIGNAL}_ENDPOINT</c>, <c>_PROTOCOL</c>, <c>_HEADERS</c> and <c>_TIMEOUT</c>
    /// over the general ones. The exporter reads the general variables itself, but a signal's own only in
    /// <c>UseOtlpExporter</c>, which exports all three signals wherever one is configured (the others to its default
    /// endpoint, localhost). A signal's endpoint is its full URL: set here, the exporter appends no <c>/v1/...</c> path.
    /// </summary>
    private static void ApplySignalSettings(OtlpExporterOptions options, IConfiguration configuration, string signal)
    {
        var prefix = $"OTEL_EXPORTER_OTLP_{signal}_";
        if (configuration[prefix + "ENDPOINT"] is { } endpoint && !string.IsNullOrWhiteSpace(endpoint))
        {
            options.Endpoint = Uri.TryCreate(endpoint.Trim(), UriKind.Absolute, out var url)
                && (url.Scheme == Uri.UriSchemeHttp || url.Scheme == Uri.UriSchemeHttps)
                ? url
                : throw new InvalidOperationException($"{prefix}ENDPOINT must be an absolute http or https URL.");
        }

        switch (configuration[prefix + "PROTOCOL"]?.Trim())
        {
            case "grpc":
                options.Protocol = OtlpExportProtocol.Grpc;
                break;
            case "http/protobuf":
                options.Protocol = OtlpExportProtocol.HttpProtobuf;
                break;
        }

        if (configuration[prefix + "HEADERS"] is { } headers && !string.IsNullOrWhiteSpace(headers))
        {
            options.Headers = headers;
        }

        if (int.TryParse(configuration[prefix + "TIMEOUT"], NumberStyles.None, CultureInfo.InvariantCulture, out var timeout))
        {
            options.TimeoutMilliseconds = timeout;
        }
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
