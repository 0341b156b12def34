using Conveyor.ServiceDefaults;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Options;
using System.Net.Http.Headers;
using System.Text;

namespace Conveyor.Api.Backpressure;

/// <summary>Refusing work early: per-client rate limits (submissions and reads), full job queues and broker alarms.</summary>
internal static class BackpressureRegistration
{
    public static IServiceCollection AddBackpressure(this IServiceCollection services)
    {
        services.TryAddSingleton(TimeProvider.System);
        services.AddOptions<BackpressureOptions>()
            .BindConfiguration(BackpressureOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();
        services.AddOptions<RateLimitingOptions>()
            .BindConfiguration(RateLimitingOptions.SectionName)
            .ValidateDataAnnotations()
            .ValidateOnStart();

        services.AddHttpClient(BrokerPressureMonitor.ManagementClientName, (provider, http) =>
        {
            var broker = provider.GetRequiredService<IOptions<RabbitMqOptions>>().Value;
            var refresh = provider.GetRequiredService<IOptions<BackpressureOptions>>().Value.RefreshMilliseconds;
            http.BaseAddress = broker.ManagementApiAddress();
            // A slow answer is dropped rather than queued behind: the next refresh asks again.
            http.Timeout = TimeSpan.FromMilliseconds(Math.Max(1000, refresh * 2));
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue(
                "Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{broker.Username}:{broker.Password}")));
        });
        services.TryAddSingleton<BrokerReadings>();
        services.AddSingleton<BrokerPressureMonitor>();
        services.AddHostedService(provider => provider.GetRequiredService<BrokerPressureMonitor>());
        services.AddSingleton<BackpressureGate>();
        services.AddHealthChecks().AddCheck<BrokerHealthCheck>(
            BrokerHealthCheck.Name, HealthStatus.Unhealthy, [HealthExtensions.ReadyTag]);

        services.AddSingleton<RateLimitRefusals>();
        services.AddSingleton<SubmissionRateLimiter>();
        services.AddSingleton<ReadRateLimiter>();
        return services;
    }

    /// <summary>
    /// Refuses a read over its client's allowance with 429 (<see cref="ReadRateLimiter"/>). After authorization, so
    /// the read counts against its caller, and before the endpoint, so a refused read queries nothing.
    /// </summary>
    public static IApplicationBuilder UseReadRateLimit(this IApplicationBuilder app)
    {
        return app.Use(async (http, next) =>
        {
            // Resolved by the first request, not as the pipeline is built: the metrics exporter does not listen yet then,
            // and the refusals' counter would miss the zeros it starts its series with.
            var limiter = http.RequestServices.GetRequiredService<ReadRateLimiter>();
            if (ReadRateLimiter.IsLimitedRead(http.Request) && limiter.Refusal(http) is { } refused)
            {
                await refused.ExecuteAsync(http);
                return;
            }

            await next(http);
        });
    }
}
