using Conveyor.Api.Backpressure;
using Conveyor.Api.Dashboard;
using Conveyor.Api.ErrorQueues;
using Conveyor.Api.Hosting;
using Conveyor.Api.Jobs;
using Conveyor.Api.Operations;
using Conveyor.Api.Security;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;

namespace Conveyor.Api;

/// <summary>Builds the Api host; <c>Program.cs</c> runs it and the integration tests start it in-process.</summary>
public static class ApiApp
{
    /// <summary>The meter of the Api's own metrics (queue depths, error-queue depths).</summary>
    public const string ApiMeterName = "Conveyor.Api";

    /// <summary>
    /// The largest request body the server reads at all (Kestrel's default is about 30 MB), a longer one is
    /// refused with 413: twice a job batch's limit, the largest any endpoint takes. Each endpoint enforces its
    /// own limit exactly and says so in its 413; this one stops whatever no endpoint would read (a form read
    /// for its anti-forgery token, say) from filling memory or the temporary directory.
    /// </summary>
    public const int MaxRequestBodyBytes = 2 * JobsApi.MaxBatchBodyBytes;

    /// <summary>
    /// Database sessions a cancel or run-now opens outside the pool, at most at once per Api (<see cref="JobRowTransactions"/>):
    /// a connection budget counts them beside <c>Maximum Pool Size</c>.
    /// </summary>
    public const int MaxRowLockSessions = 4;

    /// <param name="configure">Lets tests add to the host before it is built (an in-memory exporter, say).</param>
    public static WebApplication Build(string[] args, Action<WebApplicationBuilder>? configure = null)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions
        {
            Args = args,
            // appsettings.json sits beside the assembly: found whatever the working directory.
            ContentRootPath = AppContext.BaseDirectory,
            // Tests build the app from their own entry assembly; keep the name the same either way.
            ApplicationName = typeof(ApiApp).Assembly.GetName().Name,
        });

        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Limits.MaxRequestBodySize = MaxRequestBodyBytes);
        builder.AddConveyorTelemetry("conveyor-api", ApiMeterName);
        builder.Services.AddConveyorStorage(builder.Configuration);
        builder.Services.AddIdleTransactionLimit();
        builder.Services.AddApiMessaging(builder.Configuration);
        builder.Services.AddConveyorHealthChecks();
        builder.Services.AddApiProblemDetails();
        builder.Services.AddOpenApi(options => options.DeclareRetryAfterHeaders().DeclareDecimalsExact());
        builder.Services.AddJobs();
        builder.Services.AddBackpressure();
        builder.Services.AddApiSecurity(builder.Configuration);
        builder.Services.AddErrorQueues();
        builder.Services.AddDashboard();

        configure?.Invoke(builder);
        var app = builder.Build();

        // First, so that everything after sees the scheme the browser used.
        app.UseSecureCookieScheme();
        // Then, over HTTPS, the session and anti-forgery cookies are __Host- cookies, which no other host can plant.
        app.UseHostPrefixedCookies();
        app.UseApiErrorHandling();
        app.UseSecurityHeaders();
        app.UseAuthentication();
        // Before authorization, so a forged request is refused whatever the endpoint.
        app.UseSessionCsrfProtection();
        app.UseAuthorization();
        app.UseReadRateLimit();
        // Everything else needs a caller (the fallback policy); probes, scrapes and the API description do not.
        var open = app.MapGroup("").AllowAnonymous();
        open.MapOpenApi();
        open.MapConveyorHealthEndpoints();
        open.MapConveyorMetrics();
        app.MapJobsApi();
        app.MapErrorQueuesApi();
        app.MapOperationsApi();
        app.MapDashboard();

        return app;
    }
}
