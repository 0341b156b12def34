using System.Diagnostics;
using System.Globalization;
using Conveyor.Storage;
using Microsoft.AspNetCore.Diagnostics;

namespace Conveyor.Api.Hosting;

internal static partial class ErrorHandling
{
    /// <summary>Seconds a client is told to wait when the database is unavailable.</summary>
    public const int DatabaseRetryAfterSeconds = 5;

    /// <summary>Every error answer is an RFC 9457 problem document carrying the trace id.</summary>
    public static IServiceCollection AddApiProblemDetails(this IServiceCollection services)
    {
        services.AddProblemDetails(options => options.CustomizeProblemDetails = context =>
            context.ProblemDetails.Extensions.TryAdd(
                "traceId", Activity.Current?.Id ?? context.HttpContext.TraceIdentifier));
        services.AddExceptionHandler<DatabaseUnavailableHandler>();
        return services;
    }

    /// <summary>
    /// Unhandled exceptions become a bare 500 problem (the details go to the log, never to the
    /// client, in every environment), except an unreachable database, which is a 503 with
    /// Retry-After like an unreachable broker; empty 4xx/5xx answers such as unmatched routes get a body.
    /// </summary>
    public static WebApplication UseApiErrorHandling(this WebApplication app)
    {
        app.UseExceptionHandler(new ExceptionHandlerOptions
        {
            StatusCodeSelector = exception => exception is BadHttpRequestException bad
                ? bad.StatusCode
                : StatusCodes.Status500InternalServerError,
        });
        app.UseStatusCodePages();
        return app;
    }

    /// <summary>
    /// PostgreSQL down, restarting or out of connections, or a statement stopped at its
    /// <c>statement_timeout</c>: "try again later", not a bug.
    /// </summary>
    private sealed partial class DatabaseUnavailableHandler(IProblemDetailsService problems, ILogger<DatabaseUnavailableHandler> logger)
        : IExceptionHandler
    {
        public async ValueTask<bool> TryHandleAsync(HttpContext http, Exception exception, CancellationToken cancellationToken)
        {
            if (!DatabaseFailures.IsUnavailable(exception) && !DatabaseFailures.IsQueryCanceled(exception))
            {
                return false;
            }

            LogDatabaseUnavailable(logger, exception.GetBaseException().Message);
            http.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
            http.Response.Headers.RetryAfter = DatabaseRetryAfterSeconds.ToString(CultureInfo.InvariantCulture);
            return await problems.TryWriteAsync(new ProblemDetailsContext
            {
                HttpContext = http,
                Exception = exception,
                ProblemDetails =
                {
                    Status = StatusCodes.Status503ServiceUnavailable,
                    Title = "Database unavailable",
                    Detail = "The database cannot be reached right now. Try again later.",
                },
            });
        }

        [LoggerMessage(Level = LogLevel.Warning, Message = "Answered 503: the database is unavailable ({Reason})")]
        private static partial void LogDatabaseUnavailable(ILogger logger, string reason);
    }
}
