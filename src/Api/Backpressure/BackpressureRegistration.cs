using Conveyor.ServiceDefaults;
using Microsoft.AspNetCore.Mvc;
using Microsoft.AspNetCore.RateLimiting;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Threading.RateLimiting;

namespace Conveyor.Api.Backpressure;

/// <summary>Refusing work early: per-client rate limits, full job queues and broker alarms.</summary>
internal static class BackpressureRegistration
{
    /// <summary>The rate-limiter policy of <c>POST /api/jobs/{kind}</c>.</summary>
    public const string JobSubmissionPolicy = "job-submissions";

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
            http.BaseAddress = new Uri($"http://{broker.Host}:{broker.ManagementPort}/api/");
            // A slow answer is dropped rather than queued behind: the next refresh asks again.
            http.Timeout = TimeSpan.FromMilliseconds(Math.Max(1000, refresh * 2));
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue(
                "Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{broker.Username}:{broker.Password}")));
        });
        services.AddSingleton<BrokerPressureMonitor>();
        services.AddHostedService(provider => provider.GetRequiredService<BrokerPressureMonitor>());
        services.AddSingleton<BackpressureGate>();

        services.AddRateLimiter(limiter =>
        {
            limiter.RejectionStatusCode = StatusCodes.Status429TooManyRequests;
            limiter.OnRejected = RejectAsync;
            limiter.AddPolicy(JobSubmissionPolicy, Partition);
        });
        return services;
    }

    /// <summary>One token bucket per client: the authenticated principal's name, else the remote address.</summary>
    private static RateLimitPartition<string> Partition(HttpContext context)
    {
        var options = context.RequestServices.GetRequiredService<IOptions<RateLimitingOptions>>().Value;
        if (!options.Enabled)
        {
            return RateLimitPartition.GetNoLimiter("");
        }

        var client = context.User.Identity is { IsAuthenticated: true, Name: { Length: > 0 } name }
            ? $"principal:{name}"
            : $"address:{context.Connection.RemoteIpAddress}";
        return RateLimitPartition.GetTokenBucketLimiter(client, _ => new TokenBucketRateLimiterOptions
        {
            TokenLimit = options.Burst,
            TokensPerPeriod = options.PermitsPerSecond,
            ReplenishmentPeriod = TimeSpan.FromSeconds(1),
            // Refuse at once: a queued request holds a connection and answers late anyway.
            QueueLimit = 0,
            AutoReplenishment = true,
        });
    }

    private static async ValueTask RejectAsync(OnRejectedContext rejected, CancellationToken cancellationToken)
    {
        var http = rejected.HttpContext;
        var retryAfter = rejected.Lease.TryGetMetadata(MetadataName.RetryAfter, out var wait)
            ? Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds))
            : 1;
        http.Response.StatusCode = StatusCodes.Status429TooManyRequests;
        http.Response.Headers.RetryAfter = retryAfter.ToString(CultureInfo.InvariantCulture);
        var problems = http.RequestServices.GetRequiredService<IProblemDetailsService>();
        await problems.WriteAsync(new ProblemDetailsContext
        {
            HttpContext = http,
            ProblemDetails = new ProblemDetails
            {
                Status = StatusCodes.Status429TooManyRequests,
                Title = "Too many requests",
                Detail = $"This client sends jobs faster than it may. Retry after {retryAfter} s.",
            },
        });
    }
}
