using System.Diagnostics;
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
        services.AddExceptionHandler<BadRequestBodyHandler>();
        services.AddExceptionHandler<ApiBusyHandler>();
        return services;
    }

    /// <summary>
    /// Unhandled exceptions become a bare 500 problem (the details go to the log, never to the
    /// client, in every environment), except an unreachable database, which is a 503 with
    /// Retry-After like an unreachable broker, and a request body the client broke, which gets the
    /// 4xx Kestrel names; empty 4xx/5xx answers such as unmatched routes get a body.
    /// </summary>
    public static WebApplication UseApiErrorHandling(this WebApplication app)
    {
        app.UseExceptionHandler();
        app.UseStatusCodePages();
        return app;
    }

    /// <summary>
    /// A request body the client broke: shorter than its Content-Length, sent too slowly, badly
    /// chunked, over the size limit. Kestrel throws it from the read with the status to answer. It is
    /// no fault of the server, so it is logged at debug level only: an exception an
    /// <see cref="IExceptionHandler"/> handles is not logged as an error by the middleware, and anyone
    /// could otherwise fill the error log with stack traces.
    /// </summary>
    private sealed partial class BadRequestBodyHandler(IProblemDetailsService problems, ILogger<BadRequestBodyHandler> logger)
        : IExceptionHandler
    {
        public async ValueTask<bool> TryHandleAsync(HttpContext http, Exception exception, CancellationToken cancellationToken)
        {
            if (exception is not BadHttpRequestException bad)
            {
                return false;
            }

            LogBadRequestBody(logger, bad.StatusCode, http.Request.Method, http.Request.Path, bad.Message);
            http.Response.StatusCode = bad.StatusCode;
            // Kestrel's own words for what was wrong with the request; they name no internals.
            await problems.TryWriteAsync(new ProblemDetailsContext
            {
                HttpContext = http,
                Exception = exception,
                ProblemDetails = { Status = bad.StatusCode, Detail = bad.Message },
            });
            return true;
        }

        [LoggerMessage(Level = LogLevel.Debug, Message = "Answered {Status} to {Method} {Path}: the client's request body was unusable ({Reason})")]
        private static partial void LogBadRequestBody(ILogger logger, int status, string method, PathString path, string reason);
    }

    /// <summary>
    /// PostgreSQL down, restarting or out of connections, a statement stopped at its
    /// <c>statement_timeout</c>, or a transaction the server ended at <c>idle_in_transaction_session_timeout</c>
    /// (the Api's own limit, <see cref="IdleTransactions"/>: the request fell silent in it): "try again later", not a bug.
    /// </summary>
    private sealed partial class DatabaseUnavailableHandler(IProblemDetailsService problems, ILogger<DatabaseUnavailableHandler> logger)
        : IExceptionHandler
    {
        public async ValueTask<bool> TryHandleAsync(HttpContext http, Exception exception, CancellationToken cancellationToken)
        {
            if (!DatabaseFailures.IsUnavailable(exception) && !DatabaseFailures.IsQueryCanceled(exception)
                && !DatabaseFailures.IsIdleTransactionEnded(exception))
            {
                return false;
            }

            LogDatabaseUnavailable(logger, exception.GetBaseException().Message);
            return await WriteRetryLaterAsync(problems, http, exception, "Database unavailable", "The database cannot be reached right now. Try again later.");
        }

        [LoggerMessage(Level = LogLevel.Warning, Message = "Answered 503: the database is unavailable ({Reason})")]
        private static partial void LogDatabaseUnavailable(ILogger logger, string reason);
    }

    /// <summary>A 503 problem with <c>Retry-After</c> (<see cref="DatabaseRetryAfterSeconds"/>): nothing was done, and the same request may pass later.</summary>
    private static async ValueTask<bool> WriteRetryLaterAsync(
        IProblemDetailsService problems, HttpContext http, Exception exception, string title, string detail)
    {
        http.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
        RetryAfterResponses.Set(http.Response, DatabaseRetryAfterSeconds);
        return await problems.TryWriteAsync(new ProblemDetailsContext
        {
            HttpContext = http,
            Exception = exception,
            ProblemDetails = { Status = StatusCodes.Status503ServiceUnavailable, Title = title, Detail = detail },
        });
    }

    /// <summary>The Api had as many of a kind of work under way as it allows (<see cref="ApiBusyException"/>): 503, retry later.</summary>
    private sealed partial class ApiBusyHandler(IProblemDetailsService problems, ILogger<ApiBusyHandler> logger) : IExceptionHandler
    {
        public async ValueTask<bool> TryHandleAsync(HttpContext http, Exception exception, CancellationToken cancellationToken)
        {
            if (exception is not ApiBusyException busy)
            {
                return false;
            }

            LogBusy(logger, busy.Message);
            return await WriteRetryLaterAsync(problems, http, exception, "Too busy", busy.Message);
        }

        [LoggerMessage(Level = LogLevel.Warning, Message = "Answered 503: {Reason}")]
        private static partial void LogBusy(ILogger logger, string reason);
    }
}

/// <summary>
/// The Api has as many of some work under way as it allows, and this request waited its turn long enough: nothing was
/// done, and the same request later may go through (503 with <c>Retry-After</c>). The message says what, for the client.
/// </summary>
internal sealed class ApiBusyException(string message) : Exception(message);
